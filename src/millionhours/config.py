"""Parameters: params.yaml (nested by stage, the default profile) plus a named profile's overrides.

A profile (recipes/conf/<name>.yaml) holds only the keys it changes; it is deep-merged over
params.yaml. The profile comes from --profile, else from params.yaml's top-level `profile` key,
so `dvc exp run -S profile=tiny` and `bash recipes/run.sh --profile tiny` select the same thing.
"""
import copy
import hashlib
import json
import os
import subprocess

import yaml

PROFILE_DIR = os.path.join("recipes", "conf")


def deep_merge(base: dict, over: dict) -> dict:
    """base with every key of `over` replaced recursively (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_params(path: str = "params.yaml", profile: str | None = None) -> dict:
    """The effective parameters: params.yaml merged with recipes/conf/<profile>.yaml."""
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: parameter file not found; run from the repository root or pass --params")
    with open(path) as f:
        params = yaml.safe_load(f) or {}
    profile = profile or params.get("profile", "default")
    conf = os.path.join(os.path.dirname(os.path.abspath(path)), PROFILE_DIR, f"{profile}.yaml")
    if not os.path.isfile(conf):
        raise SystemExit(f"{conf}: unknown profile '{profile}'; use one of tiny, default, paper")
    with open(conf) as f:
        params = deep_merge(params, yaml.safe_load(f) or {})
    params["profile"] = profile
    return params


def code_version() -> str:
    """The commit of the code (git describe), '-dirty' when tracked files other than results/
    differ from it (the recipe itself rewrites the tracked results), 'unknown' outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=here, capture_output=True, text=True,  # noqa: E731
                                        timeout=10).stdout.strip()
        version = git("describe", "--always", "--abbrev=12")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(exclude,top)results")
        return (version + ("-dirty" if dirty else "")) if version else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def params_hash(params: dict) -> str:
    """Short stable hash of a parameter dict (for cache keys and result provenance)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def add_common_args(parser) -> None:
    """--params/--profile, shared by every entry point."""
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("--profile", default=None,
                        help="profile in recipes/conf/ overriding params.yaml (default: params.yaml's `profile`)")


def num_jobs(value: int | None) -> int:
    """A job-count param: 0 or None means all cores."""
    return int(value) if value else (os.cpu_count() or 1)


def entry_parser(prog: str, doc: str):
    """An entry point's argument parser: usage from its module docstring, plus --params/--profile."""
    import argparse
    parts = doc.split("\n\n", 2)
    ap = argparse.ArgumentParser(prog=f"python -m millionhours.bin.{prog}", description=parts[0],
                                 epilog=parts[2] if len(parts) > 2 else None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    return ap


def split_pairs(items, option: str, form: str, example: str) -> list[tuple[str, str]]:
    """Repeatable ``--option A=B`` values as (A, B) pairs; ValueError names a malformed one
    (``form`` says what A and B are, e.g. "SET=TEXT")."""
    out = []
    for it in items or []:
        a, sep, b = it.partition("=")
        if not sep or not a or not b:
            raise ValueError(f"{option} {it!r}: expected {form}, e.g. {example}")
        out.append((a, b))
    return out


def lookup(params: dict, dotted: str):
    """params['a']['b'] for 'a.b'; None when any part is missing."""
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def run_variants(params: dict) -> list[str]:
    """The student variants stages 6-7 run (dvc.yaml's foreach, run.sh's default): the
    profile's `run_variants`, each a key of student_variants; null = every variant."""
    have = params.get("student_variants") or {}
    keep = params.get("run_variants")
    if keep is None:
        return list(have)
    missing = [v for v in keep if v not in have]
    if missing:
        raise SystemExit(f"run_variants: {', '.join(missing)} not in student_variants; "
                         f"fix the profile's list")
    return list(keep)


def workspace_params(params: dict) -> dict:
    """The effective params as one self-contained params.yaml for a DVC workspace of their
    profile (recipes/dvc_workspace.sh), with `run_variants` spelled out as a list."""
    out = copy.deepcopy(params)
    out["run_variants"] = run_variants(out)
    return out


def main(argv=None) -> None:
    """Shell access to the effective params (recipes/run.sh): --keys SECTION prints a section's
    keys; --get KEY [--default KEY2] prints a value (KEY2's when KEY is unset); --run-variants
    prints the student variants to run; --workspace prints the whole effective params as a DVC
    workspace's params.yaml."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m millionhours.config", description=main.__doc__)
    add_common_args(ap)
    ap.add_argument("--keys", help="dotted section whose keys to print, space-separated")
    ap.add_argument("--get", help="dotted key whose value to print")
    ap.add_argument("--default", help="dotted key to print when --get's key is unset")
    ap.add_argument("--workspace", action="store_true",
                    help="print the effective params (run_variants as a list) as YAML")
    ap.add_argument("--run-variants", action="store_true",
                    help="print the student variants stages 6-7 run, space-separated")
    args = ap.parse_args(argv)
    params = load_params(args.params, args.profile)
    if args.workspace:
        print(f"# {params['profile']} profile, effective params (python -m millionhours.config "
              f"--workspace); its recipes/conf file here is empty\n"
              + yaml.safe_dump(workspace_params(params), sort_keys=False, width=100), end="")
    if args.run_variants:
        print(" ".join(run_variants(params)))
    if args.keys:
        section = lookup(params, args.keys)
        if not isinstance(section, dict):
            raise SystemExit(f"{args.params}: no section '{args.keys}'; add it or fix the name")
        print(" ".join(section))
    if args.get:
        value = lookup(params, args.get)
        if value is None and args.default:
            value = lookup(params, args.default)
        if value is None:
            raise SystemExit(f"{args.params}: '{args.get}' is not set; add it to the params")
        print(value)


if __name__ == "__main__":
    main()
