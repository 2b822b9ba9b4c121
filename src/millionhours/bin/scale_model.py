"""Project one student epoch over 1M hours for dense sync, GTC, BMUF and two-tier (a cost model).

Usage: python -m millionhours.bin.scale_model [--params params.yaml] [--out-dir results]
           [--from-results DIR] [--fired-fraction F] [--block B] [--group-size G]
           [--workers 16 64 256] [--bandwidth 25 400]
e.g.   python -m millionhours.bin.scale_model --from-results results   (stage 8 runs this)

Writes OUT_DIR/scale_model.json (every row and the set-up), scale_model.md (the table) and
scale_model.png (GPU-hours against workers, one panel per link bandwidth). The set-up is params'
`scale_model:` block (the options override it); the formulas are in millionhours/scale_model.py
and the README. Every number is a projection from the bytes per step of each algorithm and the
bare GPU throughput in ../shared/research/gpu_anchor.md, not a run. GTC's fired fraction, when
neither params nor --fired-fraction set it, is the mean `distributed.fired_fraction_mean` of the
GTC students of params' run_variants in --from-results (the setup's 0.001 when there is none; the
files say which), so on-request sweeps of the fraction do not move it.
"""
import dataclasses
import glob
import json
import os
import sys

from millionhours import config, scale_model
from millionhours.fileio import atomic_open, atomic_path, write_json

PROG = "scale_model"


def measured_fired_fraction(results: str, only=None) -> tuple[float, list[str]] | None:
    """Mean fired fraction of the GTC students in `results` (None when there is none); with
    `only`, of those variants alone (the run's own, not an on-request sweep of fractions)."""
    vals, names = [], []
    for path in sorted(glob.glob(os.path.join(results, "student_*.json"))):
        variant = os.path.basename(path)[len("student_"):-len(".json")]
        if "__" in variant or (only is not None and variant not in only):
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


def setup(params: dict, args) -> tuple[scale_model.Setup, str]:
    """params' `scale_model:` block with the command line's overrides, and where GTC's fired
    fraction came from."""
    known = {f.name for f in dataclasses.fields(scale_model.Setup)}
    block = dict(params.get("scale_model") or {})
    unknown = sorted(set(block) - known)
    if unknown:
        raise ValueError(f"params scale_model: unknown key(s) {', '.join(unknown)}; use "
                         f"{', '.join(sorted(known))}")
    for key, opt in (("fired_fraction", args.fired_fraction), ("block", args.block),
                     ("group_size", args.group_size), ("workers", args.workers),
                     ("bandwidths_gbps", args.bandwidth)):
        if opt is not None:
            block[key] = opt
    source = "params"
    if block.get("fired_fraction") is None:
        block.pop("fired_fraction", None)
        got = (measured_fired_fraction(args.from_results, params.get("run_variants"))
               if args.from_results else None)
        if got is not None:
            block["fired_fraction"], names = got
            source = f"measured: {', '.join(names)}"
        else:
            source = "the default (no GTC student measured)"
    s = dataclasses.replace(scale_model.Setup(), **block)
    if (not 0 < s.fired_fraction < 1 or s.block < 1 or s.group_size < 1 or min(s.workers) < 1
            or min(s.bandwidths_gbps) <= 0 or s.frames_per_s <= 0 or s.batch_frames < 1):
        raise ValueError("scale_model: need 0 < fired_fraction < 1, block, group_size, workers "
                         "and batch_frames >= 1, bandwidths and frames_per_s > 0")
    return s, source


def main(argv=None) -> None:
    ap = config.entry_parser(PROG, __doc__)
    ap.add_argument("--out-dir", default="results")
    ap.add_argument("--from-results", default=None, metavar="DIR",
                    help="take GTC's fired fraction from the GTC students' JSON files in DIR "
                         "(when params' scale_model.fired_fraction is null)")
    ap.add_argument("--fired-fraction", type=float, default=None)
    ap.add_argument("--block", type=int, default=None)
    ap.add_argument("--group-size", type=int, default=None)
    ap.add_argument("--workers", type=int, nargs="+", default=None)
    ap.add_argument("--bandwidth", type=float, nargs="+", default=None,
                    help="link bandwidths in Gb/s")
    args = ap.parse_args(argv)
    try:
        s, source = setup(config.load_params(args.params, args.profile), args)
    except (ValueError, TypeError) as e:
        sys.exit(f"{PROG}: error: {e}")
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
