"""Stage 5: the teacher labels the unlabeled set into a sharded top-k store.

Usage: python -m millionhours.bin.label [--params P] [--profile X] [--results results/labels.json]
           [--oracle-targets exp/targets/train_unlabeled_oracle] MODEL FEATS_DIR STORE_DIR

MODEL is a final.pt of stage 4; FEATS_DIR a stage-1 data dir (e.g. data/fbank/train_unlabeled);
STORE_DIR receives one shard per worker (millionhours.topk format). Params: the `labels:` section
(k, nj, threads, batch_frames); --dense keeps every posterior instead of the top k (the
full-target reference of T4; stage 5 adds it when `labels.dense` is true). Finished shards of an
interrupted run are kept; a store made by another teacher is refused (its header holds the
teacher's sha256). --oracle-targets adds the teacher's top-1 agreement with the oracle
alignments (analysis only).
"""
import os
import sys
import time

from millionhours import config, data, label, topk
from millionhours.fileio import file_sha256, write_json

PROG = "label"


def retire_foreign_store(store: str, teacher_hash: str, cfg: label.LabelConfig) -> None:
    """Shards of another teacher or another k are never mixed in or overwritten: moved aside."""
    if not os.path.isdir(store) or not any(n.startswith("shard-") for n in os.listdir(store)):
        return
    try:
        old = topk.TopKStore(store, expect_teacher_hash=teacher_hash)
        if old.is_dense == cfg.dense and (cfg.dense or old.k == cfg.k):
            return
        why = f"it holds k={old.k}{' dense' if old.is_dense else ''}"
    except topk.TopKStoreError as e:
        why = str(e)
    aside = f"{store.rstrip(os.sep)}.stale-{time.strftime('%Y%m%dT%H%M%S')}"
    os.replace(store, aside)
    print(f"{PROG}: {store} was made differently ({why}); moved it to {aside}", file=sys.stderr)


def main(argv=None) -> None:
    ap = config.entry_parser(PROG, __doc__)
    ap.add_argument("--results", default="results/labels.json")
    ap.add_argument("--oracle-targets", help="targets dir of oracle alignments (analysis only)")
    ap.add_argument("--dense", action="store_true", help="store all posteriors (no top-k)")
    ap.add_argument("model")
    ap.add_argument("feats")
    ap.add_argument("store")
    args = ap.parse_args(argv)
    params = config.load_params(args.params, args.profile)
    cfg = label.LabelConfig.from_params(params.get("labels", {}))
    cfg = label.LabelConfig(**{**cfg.__dict__, "nj": config.num_jobs(cfg.nj), "dense": args.dense})
    if not os.path.isfile(args.model):
        sys.exit(f"{PROG}: {args.model}: missing; train the teacher first (stage 4)")
    teacher_hash = file_sha256(args.model)
    retire_foreign_store(args.store, teacher_hash, cfg)
    try:
        run = label.label_set(args.model, args.feats, args.store, cfg,
                              progress=lambda r: print(f"{PROG}: shard {r['shard']}: {r['frames']} frames "
                                                       f"in {r['seconds']:.1f} s", flush=True))
        store = topk.TopKStore(args.store, expect_teacher_hash=teacher_hash)
    except (data.DataError, topk.TopKStoreError) as e:
        sys.exit(f"{PROG}: {e}")
    dense_f32 = 4 * store.num_senones
    res = {"store": args.store, "utterances": len(store), "frames": store.total_frames,
           "k": store.k, "dense": store.is_dense, "num_senones": store.num_senones,
           "bytes_per_frame": store.bytes_per_frame, "dense_float32_bytes_per_frame": dense_f32,
           "ratio_to_dense_float32": round(dense_f32 / store.bytes_per_frame, 2),
           "store_bytes": store.total_frames * store.bytes_per_frame, **run,
           "params": {"labels": params.get("labels"), "profile": params.get("profile")},
           "code_version": config.code_version()}
    if args.oracle_targets:
        res["oracle"] = label.oracle_agreement(store, os.path.join(args.oracle_targets, "targets.scp"))
    write_json(args.results, res)
    print(f"{PROG}: {len(store)} utterances, {store.total_frames} frames, {store.bytes_per_frame} bytes/frame "
          f"({res['ratio_to_dense_float32']}x less than dense float32)"
          + (f", top-1 agreement with oracle {res['oracle']['top1_agreement']}" if args.oracle_targets else ""))


if __name__ == "__main__":
    main()
