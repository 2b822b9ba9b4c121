"""Stage 6: train the streaming LSTM student with scheduled learning (one variant, one process).

Usage: python -m millionhours.bin.train_student [--params params.yaml] [--profile P] --variant NAME
           [--oracle-targets DIR] [--results-dir results]
           FEATS_LABELED TARGETS_LABELED FEATS_UNLABELED LABELS_DIR FEATS_DEV TARGETS_DEV EXP_DIR

e.g.   python -m millionhours.bin.train_student --variant interleaved \
           --oracle-targets exp/targets/train_unlabeled_oracle \
           data/fbank/train_labeled exp/targets/train_labeled data/fbank/train_unlabeled \
           exp/labels data/fbank/dev exp/targets/dev exp/student_interleaved

NAME is a key of params `student_variants:` (labeled_only, interleaved, segregated, oracle); its
settings are merged over `student:`, and its `schedule:` says how the labeled stream (FEATS_LABELED
+ TARGETS_LABELED, hard targets) and the machine-labeled stream (FEATS_UNLABELED + the teacher's
top-k store LABELS_DIR from stage 5, soft targets) are mixed: see millionhours/schedules.py for
what one epoch means for each. The `oracle` schedule reads the unlabeled utterances' true
alignments from --oracle-targets instead of LABELS_DIR; `labeled_only` reads neither.
FEATS_LABELED's cmvn.mat is the global CMVN for every set. EXP_DIR gets ckpt/last.pt and
ckpt/best.pt (a rerun resumes from last.pt, at the same place in both streams), log, and
final.pt (best weights, model config, num_senones, CMVN, LFR rule: what decoding needs).
RESULTS_DIR gets student_NAME.json, student_NAME_metrics.tsv and student_NAME_curve.png.

Several workers (params student.distributed: workers, algorithm sync | gtc | bmuf): launch the
same command under torchrun, e.g. `torchrun --standalone --nproc-per-node 2 -m
millionhours.bin.train_student ...` on one machine, or on each of M machines `torchrun --nnodes M
--node-rank R --nproc-per-node N --master-addr HOST --master-port PORT -m ...`. Each worker reads
its own share of both streams; rank r > 0 keeps its checkpoints in EXP_DIR/rank<r>. A dead worker
stops the job with one line; rerunning the same command resumes from the last checkpoint.
With `distributed.transport: simulated` the same command (no torchrun) runs the N workers as
virtual workers in this one process (distributed/simulated.py): 16 or 64 of them on a laptop.
`distributed.protocol: global_batch` has the N workers share each batch_frames batch (the
updates of one process); `equal_epochs` gives each worker batches of its own.
"""
import os
import sys
import types

import torch

from millionhours import config, data, models, schedules, student, train
from millionhours import distributed as D
from millionhours.distributed import simulated
from millionhours.bin import train_am
from millionhours.bin.train_am import UsageError
from millionhours.fileio import file_sha256, write_json

PROG = "train_student"


def settings(params: dict, variant: str) -> dict:
    """params `student:` with `student_variants[variant]` merged over it, checked."""
    variants = params.get("student_variants") or {}
    if variant not in variants:
        raise UsageError(f"params: no student_variants.{variant}; use one of "
                         f"{', '.join(variants) or '(none defined)'} or add it to params.yaml")
    merged = config.deep_merge(params.get("student") or {}, variants[variant] or {})
    s = train_am.settings({**params, "student": merged}, "student")
    s["threads"] = int(merged.get("threads", 1))
    s["schedule"] = schedules.ScheduleConfig(
        name=str(merged.get("schedule", "interleaved")),
        epochs=int(s["train"].get("epochs", train.TrainConfig.epochs)),
        ratio=None if merged.get("ratio") is None else float(merged["ratio"]),
        labeled_lr_scale=float(merged.get("labeled_lr_scale", 2.0)),
        order=str(merged.get("order", "machine_first")))
    s["soft"] = student.SoftConfig(**(merged.get("soft") or {}))
    s["merged"] = merged
    return s


def open_streams(args, s: dict, log) -> tuple[dict, data.UttSet, data.UttSet, dict]:
    """The schedule's streams, the labeled and dev sets, and facts about the inputs."""
    targs = types.SimpleNamespace(feats_train=args.feats_labeled, targets_train=args.targets_labeled,
                                  feats_dev=args.feats_dev, targets_dev=args.targets_dev,
                                  role="student")
    tr, dv = train_am.open_sets(targs, s, log)
    streams, facts = {schedules.LABELED: student.HardStream(tr, "labeled")}, {}
    name = s["schedule"].name
    if name == "oracle":
        if not args.oracle_targets:
            raise UsageError("the oracle schedule reads the unlabeled set's true alignments: pass "
                             "--oracle-targets DIR (stage 3 on train_unlabeled)")
        ou = data.open_uttset(args.feats_unlabeled, args.oracle_targets, tr.cmvn, s["stack"],
                              s["skip"], tr.cmn)
        if ou.num_senones != tr.num_senones:
            raise UsageError(f"{args.oracle_targets}/num_senones: {ou.num_senones} senones but "
                             f"{args.targets_labeled}/num_senones has {tr.num_senones}; align both "
                             f"sets with the same tree")
        if not ou.lengths:
            raise UsageError(f"{args.feats_unlabeled}/feats.scp: no utterance has targets in "
                             f"{args.oracle_targets}; pass the oracle targets of these features")
        streams[schedules.MACHINE] = student.HardStream(ou, "oracle")
        facts["machine"] = {"utts": len(ou.lengths), "skipped": len(ou.skipped),
                            "lfr_frames": ou.num_lfr_frames, "targets": args.oracle_targets}
        skipped = ou.skipped
    elif name != "labeled_only":
        mu, store = student.open_machine_set(args.feats_unlabeled, args.labels_dir, tr.cmvn,
                                             tr.num_senones, args.targets_labeled, s["soft"],
                                             s["stack"], s["skip"], tr.cmn)
        if not mu.lengths:
            raise UsageError(f"{args.feats_unlabeled}/feats.scp: no utterance is in the store "
                             f"{args.labels_dir}; label these features (stage 5)")
        want = str(s["merged"].get("store", "topk"))
        if (want == "dense") != store.is_dense:     # a k sweep must know what it compares
            raise UsageError(f"{args.labels_dir}: holds {'all' if store.is_dense else 'top-k'} "
                             f"posteriors but student.store is '{want}'; pass the "
                             f"{'dense store (labels.dense)' if want == 'dense' else 'top-k store'}")
        frac = float(s["merged"].get("unlabeled_fraction", 1.0))
        mu = student.subset(mu, frac)
        streams[schedules.MACHINE] = student.TopKStream(mu, args.labels_dir, s["soft"])
        facts["machine"] = {"utts": len(mu.lengths), "skipped": len(mu.skipped),
                            "unlabeled_fraction": frac,
                            "lfr_frames": mu.num_lfr_frames, "store": store.storage_report(),
                            "teacher_hash": store.teacher_hash,
                            "k_used": s["soft"].k or store.k}
        skipped = mu.skipped
    if schedules.MACHINE in streams and skipped:
        log(f"{PROG}: warning: {len(skipped)} utterance(s) of {args.feats_unlabeled}/feats.scp "
            f"have no {'oracle targets' if name == 'oracle' else 'labels'} and are skipped "
            f"(first: {', '.join(skipped[:5])})")
    return streams, tr, dv, facts


def input_fingerprint(args, s: dict, seed) -> str:
    """train_am's fingerprint of the labeled/dev inputs and params, plus the second stream's."""
    targs = types.SimpleNamespace(feats_train=args.feats_labeled, targets_train=args.targets_labeled,
                                  feats_dev=args.feats_dev, targets_dev=args.targets_dev)
    s_plain = {k: v for k, v in s.items() if k not in ("schedule", "soft")}
    digest = {"base": train_am.input_fingerprint(targs, s_plain, seed)}
    name = s["schedule"].name
    files = []
    if name != "labeled_only":
        files.append(os.path.join(args.feats_unlabeled, "feats.scp"))
    if name == "oracle":
        files += [os.path.join(args.oracle_targets, f) for f in ("targets.scp", "num_senones")]
    elif name != "labeled_only":
        for d in sorted(os.listdir(args.labels_dir)):
            for f in ("header.json", "index.txt"):
                if os.path.isfile(os.path.join(args.labels_dir, d, f)):
                    files.append(os.path.join(args.labels_dir, d, f))
    for f in files:
        digest[f] = file_sha256(f) if os.path.isfile(f) else None
    return config.params_hash(digest)


def run(args) -> tuple[dict, bool]:
    """Trains one variant (one worker of it under torchrun): (summary, whether this is rank 0)."""
    params = config.load_params(args.params, args.profile)
    s = settings(params, args.variant)
    name = f"student_{args.variant}"
    dist_p = s["merged"].get("distributed") or {}
    world = D.init(float(dist_p.get("timeout_s", 60)))     # 1 without torchrun
    virtual = simulated.current() is not None
    exp_dir = D.rank_exp_dir(args.exp_dir)                  # rank r > 0: EXP_DIR/rank<r>
    os.makedirs(exp_dir, exist_ok=True)
    log_path = os.path.join(exp_dir, "log")

    def log(msg: str) -> None:
        if D.is_main():
            print(msg, flush=True)
        with open(log_path, "a") as f:
            f.write(msg + "\n")

    log(f"# {' '.join([PROG] + sys.argv[1:])}")
    # `threads` is the whole job's: torchrun's workers share the cores, so each takes its part;
    # so do virtual workers, though they run one at a time: on their small shares of a batch,
    # OpenMP's fork and join per op costs more than a second thread gains (N = 64, one epoch of
    # the default profile: 78 s on 1 thread, 160 s on 2)
    torch.set_num_threads(max(1, s["threads"] // world))
    streams, tr, dv, facts = open_streams(args, s, log)
    seed = int(params.get("seed", 0)) + int(s["merged"].get("seed_offset", 0))
    cfg = train.TrainConfig.from_params(s["train"], seed)
    train.seed_everything(cfg.seed)      # same seed -> same initial weights for every variant
    model = models.build_model(s["model"], tr.num_senones, 64 * s["stack"])
    fingerprint = input_fingerprint(args, s, seed) + f"-world{world}"
    train_am.retire_stale_checkpoints(exp_dir, fingerprint, log)
    train_am.check_resume(exp_dir, model)
    sync = D.make_sync(dist_p, world)
    D.prepare_resume(os.path.join(exp_dir, "ckpt"), sync)   # every rank resumes at one step
    log(model.summary(name) + (f"; {world} workers, {dist_p.get('algorithm')}" if world > 1 else ""))

    # each worker reads its own share of both streams; the schedule holds on every worker
    split = {"equal_epochs": "batches", "global_batch": "pieces"}[protocol(dist_p)]
    train_ds = student.ScheduledBatches(s["schedule"], streams, cfg.seed, s["data"],
                                        rank=D.rank(), world=world, split=split)
    d, cuda = s["data"], torch.cuda.is_available()
    # virtual workers read their batches in this process (no loader forked from a thread)
    train_src = data.BatchSource(train_ds, num_workers=0 if virtual else int(d.get("num_workers", 1)),
                                 prefetch_factor=int(d.get("prefetch_factor", 4)), pin_memory=cuda)
    _, dev_src = train_am.make_sources(tr, dv, d, cfg.seed, cuda)
    sc, epoch_1 = s["schedule"], student.describe_epoch(train_ds, 0)
    how = ("" if sc.name == "labeled_only" else
           f" (ratio {sc.ratio or 'natural'}, labeled lr x{sc.labeled_lr_scale:g}"
           f"{', ' + sc.order if sc.name == 'segregated' else ''})")
    log(f"{PROG}: schedule {sc.name}{how}; epoch 1: "
        f"{epoch_1}; dev {len(dv.lengths)} utts / "
        f"{dv.num_lfr_frames} LFR frames")
    last = os.path.join(exp_dir, "ckpt", "last.pt")
    if os.path.isfile(last):
        loop = torch.load(last, map_location="cpu", weights_only=False)["loop"]
        if loop["epoch"] < cfg.epochs:
            pos = train_ds.schedule.position(loop["epoch"], loop["batch"])
            log(f"{PROG}: resuming at epoch {loop['epoch'] + 1}, step {loop['batch']}: "
                + "; ".join(f"{k} stream {v}" for k, v in pos.items()))
    meta = {"role": name, "variant": args.variant, "model": model.summary(name),
            "num_senones": tr.num_senones,
            "schedule": {**vars(sc), "epoch_1": epoch_1,
                         "steps_per_epoch": [train_ds.num_batches(e) for e in range(cfg.epochs)]},
            "soft": vars(s["soft"]),
            "inputs": {"feats_labeled": args.feats_labeled, "targets_labeled": args.targets_labeled,
                       "feats_unlabeled": args.feats_unlabeled, "labels_dir": args.labels_dir,
                       "oracle_targets": args.oracle_targets, "feats_dev": args.feats_dev,
                       "targets_dev": args.targets_dev},
            "utterances": {"labeled": len(tr.lengths), "dev": len(dv.lengths)},
            "lfr_frames": {"labeled": tr.num_lfr_frames, "dev": dv.num_lfr_frames},
            "machine": facts.get("machine"),
            "params": {"profile": params.get("profile"), "seed": params.get("seed"),
                       "train_seed": seed, "student": s["merged"]}}
    results_dir = args.results_dir if D.is_main() else None
    summary = train.fit(model, train_src, dev_src, cfg, exp_dir, name, results_dir,
                        meta=meta, sync=sync, log=log)
    if world > 1:
        summary["distributed"] = D.summary(sync, summary)   # collective: every rank
        summary["distributed"]["protocol"] = protocol(dist_p)
        if virtual:
            summary["distributed"]["simulated"] = {
                "state_mb_per_worker": simulated.state_bytes(model, sync) / 2 ** 20}
        if results_dir:
            write_json(os.path.join(results_dir, f"{name}.json"), summary)
    main_rank = D.is_main()
    if main_rank:
        train_am.write_final(args.exp_dir, model, tr, s, name, summary)
    D.shutdown()
    return summary, main_rank


def protocol(dist_p: dict) -> str:
    p = str(dist_p.get("protocol", "equal_epochs"))
    if p not in ("equal_epochs", "global_batch"):
        raise UsageError(f"params student.distributed.protocol: '{p}'; use equal_epochs or "
                         f"global_batch")
    return p


def simulated_workers(args) -> int:
    """N > 1 when the variant runs N virtual workers in this process, else 0."""
    s = settings(config.load_params(args.params, args.profile), args.variant)
    dist_p = s["merged"].get("distributed") or {}
    transport = str(dist_p.get("transport", "torchrun"))
    if transport not in ("torchrun", "simulated"):
        raise UsageError(f"params student.distributed.transport: '{transport}'; use torchrun "
                         f"or simulated")
    workers = int(dist_p.get("workers", 1))
    return workers if transport == "simulated" and workers > 1 else 0


def run_simulated(args, workers: int) -> tuple[dict, bool]:
    """The N workers as virtual workers of this process; rank 0's summary, with each worker's
    busy seconds added to the results JSON."""
    out = simulated.run_workers(run, workers, args)
    summary = out[0][0]
    busy = simulated.run_workers.last_busy_s
    sim = summary["distributed"].setdefault("simulated", {})
    sim.update(workers=workers, busy_s_per_worker=busy, busy_s_total=sum(busy))
    if args.results_dir:
        write_json(os.path.join(args.results_dir, f"student_{args.variant}.json"), summary)
    return summary, True


def main(argv=None) -> None:
    ap = config.entry_parser(PROG, __doc__)
    ap.add_argument("--variant", required=True,
                    help="key of params student_variants: labeled_only, interleaved, segregated, oracle")
    ap.add_argument("--oracle-targets", default=None,
                    help="stage-3 targets of FEATS_UNLABELED (the oracle schedule's second stream)")
    ap.add_argument("--results-dir", default="results",
                    help="where student_NAME.json, _metrics.tsv, _curve.png go ('' = none)")
    ap.add_argument("feats_labeled", help="labeled features data dir (feats.scp, utt2num_frames, cmvn.mat)")
    ap.add_argument("targets_labeled", help="labeled targets dir from stage 3 (targets.scp, num_senones)")
    ap.add_argument("feats_unlabeled", help="unlabeled features data dir (machine-labeled stream)")
    ap.add_argument("labels_dir", help="the teacher's store from stage 5 (top-k, or dense when "
                                       "student.store is dense)")
    ap.add_argument("feats_dev", help="dev features data dir")
    ap.add_argument("targets_dev", help="dev targets dir from stage 3")
    ap.add_argument("exp_dir", help="output dir, e.g. exp/student_interleaved (a rerun resumes in it)")
    args = ap.parse_args(argv)
    try:
        workers = simulated_workers(args)
        if workers:
            summary, main_rank = run_simulated(args, workers)
        else:                                        # a lost worker: one line, exit 1; rerun resumes
            summary, main_rank = D.run_main(run, args)
    except (UsageError, data.DataError, ValueError) as e:
        sys.exit(f"{PROG}: error: {train_am.error_line(e)}")
    if not main_rank:
        return
    print(f"{PROG}: {args.exp_dir}/final.pt: dev CE {summary['dev_ce']:.4f}, dev frame acc "
          f"{100 * summary['dev_frame_acc']:.2f}% (epoch {summary['best_epoch']}), "
          f"{summary['frames_per_s']:.0f} frames/s")


if __name__ == "__main__":
    main()
