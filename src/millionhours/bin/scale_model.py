"""Project one student epoch over 1M hours for dense sync, GTC, BMUF and two-tier (a cost model).

Usage: python -m millionhours.bin.scale_model [--out-dir results] [--fired-fraction F]
           [--from-results DIR] [--block B] [--group-size G] [--workers 16 64 256]
           [--bandwidth 25 400]
e.g.   python -m millionhours.bin.scale_model --from-results results

Writes OUT_DIR/scale_model.json (every row and the set-up), scale_model.md (the table) and
scale_model.png (GPU-hours against workers, one panel per link bandwidth). The formulas are in
millionhours/scale_model.py and the README; every number is a projection from the bytes per step
of each algorithm and the bare GPU throughput in ../shared/research/gpu_anchor.md, not a run.
--from-results takes GTC's fired fraction from the results' GTC students (the mean over their
runs of `distributed.fired_fraction_mean`) instead of --fired-fraction.
"""
import argparse
import dataclasses
import glob
import json
import os
import sys

from millionhours import config, scale_model
from millionhours.fileio import atomic_open, atomic_path, write_json

PROG = "scale_model"


def measured_fired_fraction(results: str) -> tuple[float, list[str]] | None:
    """Mean fired fraction of the GTC students in `results` (None when there is none)."""
    vals, names = [], []
    for path in sorted(glob.glob(os.path.join(results, "student_*.json"))):
        if "__" in os.path.basename(path):
            continue
        d = (json.load(open(path)).get("distributed") or {})
        if d.get("algorithm") == "gtc" and d.get("fired_fraction_mean"):
            vals.append(float(d["fired_fraction_mean"]))
            names.append(os.path.basename(path)[:-5])
    return (sum(vals) / len(vals), names) if vals else None


def plot(rows: list[dict], s: scale_model.Setup, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(s.bandwidths_gbps), figsize=(5 * len(s.bandwidths_gbps), 4),
                             squeeze=False)
    for ax, bw in zip(axes[0], s.bandwidths_gbps):
        for algo in scale_model.ALGORITHMS:
            pts = [(r["workers"], r["gpu_hours"]) for r in rows
                   if r["gbps"] == bw and r["algorithm"] == algo]
            ax.plot(*zip(*pts), "o-", label=algo)
        ideal = scale_model.project("sync", 1, bw, s)["gpu_hours"]
        ax.axhline(ideal, color="grey", ls=":", label="no communication")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("workers (GPUs)")
        ax.set_ylabel("GPU-hours per epoch over 1M h")
        ax.set_title(f"{bw:g} Gb/s links (projection)")
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    d = scale_model.Setup()
    ap = argparse.ArgumentParser(prog=f"python -m millionhours.bin.{PROG}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="results")
    ap.add_argument("--from-results", default=None, metavar="DIR",
                    help="take GTC's fired fraction from the GTC students' JSON files in DIR")
    ap.add_argument("--fired-fraction", type=float, default=d.fired_fraction)
    ap.add_argument("--block", type=int, default=d.block)
    ap.add_argument("--group-size", type=int, default=d.group_size)
    ap.add_argument("--workers", type=int, nargs="+", default=d.workers)
    ap.add_argument("--bandwidth", type=float, nargs="+", default=d.bandwidths_gbps,
                    help="link bandwidths in Gb/s")
    args = ap.parse_args(argv)
    source = "--fired-fraction"
    fired = args.fired_fraction
    if args.from_results:
        got = measured_fired_fraction(args.from_results)
        if got is None:
            sys.exit(f"{PROG}: error: {args.from_results}: no GTC student results "
                     f"(student_*.json with distributed.algorithm gtc); run one or pass "
                     f"--fired-fraction")
        fired, names = got
        source = f"measured: {', '.join(names)}"
    if not 0 < fired < 1 or args.block < 1 or min(args.workers) < 1 or min(args.bandwidth) <= 0:
        sys.exit(f"{PROG}: error: need 0 < fired fraction < 1, block >= 1, workers >= 1 and "
                 f"bandwidths > 0")
    s = dataclasses.replace(d, fired_fraction=fired, block=args.block, group_size=args.group_size,
                            workers=args.workers, bandwidths_gbps=args.bandwidth)
    rows = scale_model.table(s)
    os.makedirs(args.out_dir, exist_ok=True)
    write_json(os.path.join(args.out_dir, "scale_model.json"),
               {"projection": True, "setup": dataclasses.asdict(s), "fired_fraction_source": source,
                "rows": rows, "code_version": config.code_version()})
    with atomic_open(os.path.join(args.out_dir, "scale_model.md")) as f:
        f.write(scale_model.markdown(rows, s) + f"\nGTC fired fraction from {source}.\n")
    plot(rows, s, os.path.join(args.out_dir, "scale_model.png"))
    print(f"{PROG}: {args.out_dir}/scale_model.{{json,md,png}} ({len(rows)} rows)", file=sys.stderr)


if __name__ == "__main__":
    main()
