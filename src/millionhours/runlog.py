"""Stage timings: what each stage of the last run cost, from the recipe's own log.

``recipes/run.sh`` (and ``recipes/setup.sh``) append one line per finished stage to
``exp/timing.tsv`` (the run's exp dir): ``name <TAB> start <TAB> end`` (Unix seconds). Names are
the DVC stage names (``corpus``, ``student@interleaved``, ``decode@teacher``, ...), so
``dvc repro`` and ``run.sh`` runs read the same. A stage run again (a rerun, a resumed ``dvc repro``) counts
once, by its latest line; a stage that failed wrote no line.

:func:`summarize` gives ``results/timing.json``: ``total_s`` is the sum of the stages' own
seconds (set-up included), so a run spread over several sittings is not charged for the time
between them; ``wall_s`` is first start to last end, for comparison.
"""
from __future__ import annotations

import os

__all__ = ["read_log", "summarize"]


def read_log(path: str) -> dict[str, tuple[float, float]]:
    """name -> (start, end) of its latest complete line; malformed lines are named and skipped."""
    out: dict[str, tuple[float, float]] = {}
    if not os.path.isfile(path):
        return out
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            try:
                name, start, end = parts[0], float(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                print(f"runlog: warning: {path}:{n}: not 'name<TAB>start<TAB>end'; skipped")
                continue
            if end >= start and name:
                out.pop(name, None)          # the latest line wins and keeps run order
                out[name] = (start, end)
    return out


def summarize(path: str, code_version: str, cores: int | None = None) -> dict:
    """timing.json's content from a recipe timing log (``exp/timing.tsv``)."""
    stages = read_log(path)
    spans = list(stages.values())
    return {
        "total_s": round(sum(e - s for s, e in spans), 1),
        "stages": {k: round(e - s, 1) for k, (s, e) in stages.items()},
        "wall_s": round(max(e for _, e in spans) - min(s for s, _ in spans), 1) if spans else 0.0,
        "code_version": code_version,
        "cores": cores or os.cpu_count(),
        "log": path,
    }


def main(argv=None) -> None:
    """python -m millionhours.runlog LOG OUT_JSON: write timing.json (recipes/run.sh stage 8)."""
    import argparse
    from millionhours import config
    from millionhours.fileio import write_json
    ap = argparse.ArgumentParser(prog="python -m millionhours.runlog", description=main.__doc__)
    ap.add_argument("log", help="the recipe's timing log, e.g. exp/timing.tsv")
    ap.add_argument("out", help="output JSON, e.g. results/timing.json")
    args = ap.parse_args(argv)
    t = summarize(args.log, config.code_version())
    write_json(args.out, t)
    print(f"runlog: {args.out}: {len(t['stages'])} stages, {t['total_s'] / 60:.1f} min in all")


if __name__ == "__main__":
    main()
