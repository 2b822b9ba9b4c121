"""Stage 4: train an acoustic model (the BLSTM teacher) on features + senone targets.

Usage: python -m millionhours.bin.train_am [--params params.yaml] [--profile P] --role teacher
           [--results-dir results] FEATS_TRAIN TARGETS_TRAIN FEATS_DEV TARGETS_DEV EXP_DIR

e.g.   python -m millionhours.bin.train_am --role teacher data/fbank/train_labeled \
           exp/targets/train_labeled data/fbank/dev exp/targets/dev exp/teacher

FEATS_* are feature data dirs (feats.scp, utt2num_frames; FEATS_TRAIN also cmvn.mat, the global
CMVN stats used for every set); TARGETS_* are stage-3 dirs (targets.scp, num_senones). Model,
data and optimizer settings come from params[ROLE] (model:, data:, train:). EXP_DIR gets
ckpt/last.pt and ckpt/best.pt (a rerun resumes from last.pt), log, and final.pt: the best
weights with the model config, num_senones, the CMVN stats and the LFR rule, all that labeling
and decoding need. RESULTS_DIR gets ROLE.json, ROLE_metrics.tsv and ROLE_curve.png.
"""
import os
import sys
import time

import torch

from millionhours import config, data, models, train
from millionhours.augment import AugmentConfig
from millionhours.fileio import atomic_open, file_sha256

PROG = "train_am"


class UsageError(ValueError):
    """A bad input or setting; one line naming the file and the fix."""


def settings(params: dict, role: str) -> dict:
    if role not in params or not isinstance(params[role], dict):
        raise UsageError(f"params: no '{role}:' section; add {role}: {{model:, data:, train:}} "
                         f"to params.yaml")
    p = params[role]
    feats = params.get("features", {})
    return {"model": p.get("model", {}), "data": p.get("data", {}), "train": p.get("train", {}),
            "threads": int(p.get("threads", 2)), "cmn": str(p.get("data", {}).get("cmn", "global")),
            "window": bool(p.get("data", {}).get("window_targets", False)),
            "stack": int(feats.get("lfr_stack", 3)), "skip": int(feats.get("lfr_skip", 3))}


def open_sets(args, s: dict, log) -> tuple[data.UttSet, data.UttSet]:
    """Train and dev utterance sets, checked: senone counts agree, utts without targets skipped."""
    cmvn = data.load_cmvn(args.feats_train)
    tr = data.open_uttset(args.feats_train, args.targets_train, cmvn, s["stack"], s["skip"], s["cmn"],
                          s["window"])
    dv = data.open_uttset(args.feats_dev, args.targets_dev, cmvn, s["stack"], s["skip"], s["cmn"],
                          s["window"])
    if tr.num_senones != dv.num_senones:
        raise UsageError(f"{args.targets_dev}/num_senones: {dv.num_senones} senones but "
                         f"{args.targets_train}/num_senones has {tr.num_senones}; align train and "
                         f"dev with the same tree (stage 3 on the same exp dir)")
    want = s["model"].get("num_senones")
    if want is not None and int(want) != tr.num_senones:
        raise UsageError(f"{args.targets_train}/num_senones: {tr.num_senones} senones but the "
                         f"model params ask for {want}; build the tree with {want} leaves or set "
                         f"{args.role}.model.num_senones to null")
    for name, u, feats_dir in (("train", tr, args.feats_train), ("dev", dv, args.feats_dev)):
        if u.skipped:
            log(f"{PROG}: warning: {len(u.skipped)} {name} utterance(s) of {feats_dir}/feats.scp "
                f"have no targets or no frames and are skipped (first: {', '.join(u.skipped[:5])})")
        if not u.lengths:
            raise UsageError(f"{feats_dir}/feats.scp: no utterance has targets in "
                             f"{args.targets_train if name == 'train' else args.targets_dev}; pass "
                             f"the targets made from these features")
    return tr, dv


def input_fingerprint(args, s: dict, seed) -> str:
    """What a checkpoint depends on: the role's params, the seed and the exact input lists."""
    digest = {"params": s, "seed": seed}
    for name in ("feats_train", "targets_train", "feats_dev", "targets_dev"):
        d = getattr(args, name)
        for f in ("feats.scp", "targets.scp", "num_senones", "cmvn.mat"):
            path = os.path.join(d, f)
            if os.path.isfile(path):
                digest[f"{name}/{f}"] = file_sha256(path)
    return config.params_hash(digest)


def retire_stale_checkpoints(exp_dir: str, fingerprint: str, log) -> None:
    """Checkpoints made from other inputs or params are moved aside (never resumed, never lost)."""
    ckpt, stamp = os.path.join(exp_dir, "ckpt"), os.path.join(exp_dir, "ckpt", "fingerprint")
    if os.path.isdir(ckpt) and (not os.path.isfile(stamp) or open(stamp).read().strip() != fingerprint):
        old = f"{ckpt}.stale-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(ckpt, old)
        log(f"{PROG}: inputs or params changed since the checkpoints in {ckpt}; moved them to {old}")
    os.makedirs(ckpt, exist_ok=True)
    with atomic_open(stamp) as f:
        f.write(fingerprint + "\n")


def check_resume(exp_dir: str, model: models.AcousticModel) -> None:
    """A checkpoint for another model shape must not be silently resumed."""
    last = os.path.join(exp_dir, "ckpt", "last.pt")
    if not os.path.isfile(last):
        return
    state = torch.load(last, map_location="cpu", weights_only=False)["model"]
    mine = model.state_dict()
    bad = next((k for k in mine if k not in state or state[k].shape != mine[k].shape), None)
    if bad is not None:
        raise UsageError(f"{last}: holds a different model ({bad} differs, e.g. another senone "
                         f"count or size); remove {exp_dir} to train from scratch")


def make_sources(tr, dv, d: dict, seed: int, cuda: bool):
    batch_frames = int(d.get("batch_frames", 4096))
    common = dict(num_workers=int(d.get("num_workers", 1)),
                  prefetch_factor=int(d.get("prefetch_factor", 4)), pin_memory=cuda)
    train_ds = data.PlannedBatches(tr, seed, batch_frames, int(d.get("batch_size", 64)),
                                   d.get("chunk_frames"), int(d.get("bucket_width", 8)),
                                   uniform=bool(d.get("uniform_batches", False)),
                                   augment=AugmentConfig.from_params(d.get("augment")))
    dev_ds = data.PlannedBatches(dv, seed, int(d.get("eval_batch_frames", batch_frames)),
                                 int(d.get("eval_batch_size", d.get("batch_size", 64))), train=False)
    return data.BatchSource(train_ds, **common), data.BatchSource(dev_ds, **common)


def run(args) -> dict:
    params = config.load_params(args.params, args.profile)
    s = settings(params, args.role)
    os.makedirs(args.exp_dir, exist_ok=True)
    log_path = os.path.join(args.exp_dir, "log")

    def log(msg: str) -> None:
        print(msg, flush=True)
        with open(log_path, "a") as f:
            f.write(msg + "\n")

    log(f"# {' '.join([PROG] + sys.argv[1:])}")
    torch.set_num_threads(s["threads"])
    tr, dv = open_sets(args, s, log)
    cfg = train.TrainConfig.from_params(s["train"], int(params.get("seed", 0)))
    train.seed_everything(cfg.seed)      # same seed -> same initial weights
    model = models.build_model(s["model"], tr.num_senones, 64 * s["stack"])
    retire_stale_checkpoints(args.exp_dir, input_fingerprint(args, s, params.get("seed")), log)
    check_resume(args.exp_dir, model)
    log(model.summary(args.role))
    log(f"{PROG}: train {len(tr.lengths)} utts / {tr.num_lfr_frames} LFR frames, "
        f"dev {len(dv.lengths)} utts / {dv.num_lfr_frames} LFR frames")
    train_src, dev_src = make_sources(tr, dv, s["data"], cfg.seed, torch.cuda.is_available())
    meta = {"role": args.role, "model": model.summary(args.role), "num_senones": tr.num_senones,
            "inputs": {"feats_train": args.feats_train, "targets_train": args.targets_train,
                       "feats_dev": args.feats_dev, "targets_dev": args.targets_dev},
            "utterances": {"train": len(tr.lengths), "dev": len(dv.lengths),
                           "train_skipped": len(tr.skipped), "dev_skipped": len(dv.skipped)},
            "lfr_frames": {"train": tr.num_lfr_frames, "dev": dv.num_lfr_frames},
            "params": {"profile": params.get("profile"), "seed": params.get("seed"),
                       args.role: params[args.role]}}
    summary = train.fit(model, train_src, dev_src, cfg, args.exp_dir, args.role,
                        args.results_dir, meta=meta, log=log)
    write_final(args.exp_dir, model, tr, s, args.role, summary)
    return summary


def write_final(exp_dir: str, model, tr: data.UttSet, s: dict, role: str, summary: dict) -> None:
    """final.pt = the best epoch's weights + everything needed to use them."""
    best = torch.load(os.path.join(exp_dir, "ckpt", "best.pt"), map_location="cpu",
                      weights_only=False)
    model.load_state_dict(best["model"])
    models.save_final(os.path.join(exp_dir, "final.pt"), model.cpu(), role=role,
                      num_senones=tr.num_senones, cmvn=tr.cmvn, cmn=tr.cmn,
                      lfr={"stack": s["stack"], "skip": s["skip"]}, epoch=best["epoch"],
                      dev=best["dev"], code_version=summary["code_version"])


def error_line(e: Exception) -> str:
    """The one line of a usage or data error; a DataError raised in a loader worker comes back
    wrapped with its traceback, whose last line is the message."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    msg = lines[-1] if lines else type(e).__name__
    return msg.split(": ", 1)[1] if msg.startswith(("DataError: ", "millionhours.")) else msg


def main(argv=None) -> None:
    ap = config.entry_parser(PROG, __doc__)
    ap.add_argument("--role", default="teacher", help="params section to read (default: teacher)")
    ap.add_argument("--results-dir", default="results",
                    help="where ROLE.json, ROLE_metrics.tsv, ROLE_curve.png go ('' = none)")
    ap.add_argument("feats_train", help="training features data dir (feats.scp, utt2num_frames, cmvn.mat)")
    ap.add_argument("targets_train", help="training targets dir from stage 3 (targets.scp, num_senones)")
    ap.add_argument("feats_dev", help="dev features data dir")
    ap.add_argument("targets_dev", help="dev targets dir from stage 3")
    ap.add_argument("exp_dir", help="output dir, e.g. exp/teacher (a rerun resumes in it)")
    args = ap.parse_args(argv)
    try:
        summary = run(args)
    except (UsageError, data.DataError, ValueError) as e:
        sys.exit(f"{PROG}: error: {error_line(e)}")
    print(f"{PROG}: {args.exp_dir}/final.pt: dev CE {summary['dev_ce']:.4f}, dev frame acc "
          f"{100 * summary['dev_frame_acc']:.2f}% (epoch {summary['best_epoch']}), "
          f"{summary['frames_per_s']:.0f} frames/s")


if __name__ == "__main__":
    main()
