"""Compare two result sets metric by metric: what changed when a parameter (or the code) changed.

Usage: python -m millionhours.bin.compare [--all] [--only SUBSTR] A B

A and B are each one of
  a folder            results/ of another clone or a copied run (`results`, `/tmp/run2/results`)
  a git revision      the results/ committed there (`HEAD~1`, `main`, a tag or sha)
  a DVC experiment    its name from `dvc exp show` / `dvc exp run -n NAME` (refs/exps/...)
  workspace           ./results as it is now

e.g. dvc exp run -S student.labeled_lr_scale=4 -n lr4 student@interleaved decode_student@interleaved
     python -m millionhours.bin.compare HEAD lr4

Prints a row per headline metric that differs (every WER, changed or not): A, B, B - A and the
relative change, WER rows first; --all prints every numeric field of every result file.
Where this sits beside DVC: `dvc params diff A B` lists the parameter changes, `dvc metrics diff
A B` every number of the metrics files declared in dvc.yaml; this command reads every result
JSON (per-set decodes, students, the distributed stats) and shows only the headline metrics (all
numbers with --all), so the table answers "did WER move, and at what cost".
"""
import argparse
import glob
import json
import os
import subprocess
import sys

PROG = "compare"
# the numbers worth a row by default (dotted paths into each result JSON)
HEADLINE = ("wer", "ser", "substitutions", "deletions", "insertions", "acwt", "oov_rate",
            "rtf_forward", "rtf_search", "dev_ce", "dev_frame_acc", "frames_per_s", "train_s",
            "steps", "param_count", "bytes_per_frame", "top1_agreement", "oracle.top1_agreement",
            "distributed.bytes_per_step", "distributed.ratio_to_dense", "distributed.syncs",
            "distributed.wall_s", "eval.dev.ppl", "eval.test_clean.ppl", "hclg.states", "wall_s")
SKIP = ("history", "params", "search", "acwt_sweep", "inputs", "machine", "schedule", "train",
        "peak_memory", "graph_stamp")


class CompareError(ValueError):
    pass


def git(*args: str) -> str:
    proc = subprocess.run(["git", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompareError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else
                           f"git {' '.join(args)} failed")
    return proc.stdout


def resolve_ref(name: str) -> str | None:
    """A git revision or DVC experiment name -> a commit, or None if it is neither."""
    for ref in git("for-each-ref", "--format=%(refname)", "refs/exps").split():
        if ref.rsplit("/", 1)[-1] == name:
            return ref
    ok = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
                        capture_output=True, text=True)
    return name if ok.returncode == 0 else None


def load_set(spec: str, results_dir: str = "results") -> dict[str, dict]:
    """stem -> parsed JSON of every result file of a folder, revision or experiment."""
    folder = results_dir if spec == "workspace" else spec
    if os.path.isdir(folder):
        out = {}
        for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
            with open(path) as f:
                out[os.path.basename(path)[:-5]] = json.load(f)
        if not out:
            raise CompareError(f"{folder}: no *.json result files")
        return out
    ref = resolve_ref(spec)
    if ref is None:
        raise CompareError(f"{spec}: not a folder, git revision or DVC experiment name "
                           f"(see `dvc exp show`, `git log`)")
    files = [p for p in git("ls-tree", "-r", "--name-only", ref, "--", results_dir).split()
             if p.endswith(".json")]
    if not files:
        raise CompareError(f"{spec}: no {results_dir}/*.json committed there")
    return {os.path.basename(p)[:-5]: json.loads(git("show", f"{ref}:{p}")) for p in files}


def flatten(obj, prefix: str = "") -> dict[str, float]:
    """Numeric leaves as dotted paths, skipping bulky or non-metric sections."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if prefix == "" and k in SKIP:
                continue
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix[:-1]] = float(obj)
    return out


def rows(a: dict, b: dict, every: bool, only: str | None) -> list[tuple]:
    out = []
    for stem in sorted(set(a) & set(b)):
        if only and only not in stem:
            continue
        fa, fb = flatten(a[stem]), flatten(b[stem])
        for key in sorted(set(fa) & set(fb), key=lambda k: (k != "wer", k)):
            if every or (key in HEADLINE and (key == "wer" or fa[key] != fb[key])):
                out.append((stem, key, fa[key], fb[key]))
    out.sort(key=lambda r: (r[1] != "wer", r[0]))
    return out


def num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 1000 or x == int(x) else f"{x:.4g}"


def render(table: list[tuple], name_a: str, name_b: str, only_a: list, only_b: list) -> str:
    head = ("result", "metric", name_a, name_b, "B - A", "rel")
    body = []
    for stem, key, va, vb in table:
        rel = f"{100 * (vb - va) / abs(va):+.1f}%" if va else "–"
        body.append((stem, key, num(va), num(vb), num(vb - va) if vb != va else "0", rel))
    widths = [max(len(str(r[i])) for r in [head] + body) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    text = [line(head), line(["-" * w for w in widths])] + [line(r) for r in body]
    if only_a:
        text.append(f"only in {name_a}: {', '.join(only_a)}")
    if only_b:
        text.append(f"only in {name_b}: {', '.join(only_b)}")
    return "\n".join(text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m millionhours.bin.{PROG}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="folder, git revision, DVC experiment or 'workspace'")
    ap.add_argument("b", help="folder, git revision, DVC experiment or 'workspace'")
    ap.add_argument("--all", action="store_true",
                    help="every numeric field, changed or not (default: changed headlines + WERs)")
    ap.add_argument("--only", help="only result files whose name contains this (e.g. __test_clean)")
    ap.add_argument("--results-dir", default="results", help="results folder inside a revision")
    args = ap.parse_args(argv)
    try:
        a, b = load_set(args.a, args.results_dir), load_set(args.b, args.results_dir)
    except (CompareError, OSError, json.JSONDecodeError) as e:
        sys.exit(f"{PROG}: error: {e}")
    table = rows(a, b, args.all, args.only)
    changed = [r for r in table if r[2] != r[3]]
    print(render(table, args.a, args.b, sorted(set(a) - set(b)), sorted(set(b) - set(a))))
    print(f"{PROG}: {len(table)} metrics in both, {len(changed)} differ", file=sys.stderr)


if __name__ == "__main__":
    main()
