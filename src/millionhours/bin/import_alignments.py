"""Stage 3: a Kaldi exp dir's alignments -> senone (pdf) targets at the low frame rate, plus priors.

Usage: python -m millionhours.bin.import_alignments [--params params.yaml] [--profile P]
           [--results results/import.json] EXP_DIR FEATS_DATADIR OUT_DIR

EXP_DIR is any Kaldi exp dir with final.mdl, tree and ali.*.gz (plus optional num_jobs and
phones.txt); FEATS_DATADIR the data dir with feats.scp (and utt2num_frames) the alignments were
made from. OUT_DIR gets targets.{ark,scp} (int32 pdf ids, one per 30 ms LFR frame, keyed by
utterance), phone_targets.{ark,scp}, window_targets.{ark,scp} (the pdf ids of all 10 ms frames
each LFR frame stacks, in time order, flattened), senone_counts (Kaldi text vector, as analyze-counts),
num_senones, copies of final.mdl/tree/phones.txt, and info.json. Mirrors Kaldi's ali-to-pdf,
ali-to-phones --per-frame and analyze-counts. OUT_DIR is built under a temporary name and only
appears, complete, at the end.
"""
import contextlib
import os
import shutil
import sys

import kaldiio
from tqdm import tqdm

from millionhours import alignments as A
from millionhours import config
from millionhours.fileio import write_json

PROG = "import_alignments"
SHOW = 5   # utterance ids named in a warning


def warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr)


def _settings(params: dict) -> dict:
    """The params this stage reads: the LFR rule (features) and the length tolerance."""
    feats = params.get("features", {})
    ali = params.get("alignments", {}) or {}
    return {"lfr_stack": int(feats.get("lfr_stack", 3)), "lfr_skip": int(feats.get("lfr_skip", 3)),
            "tolerance_lfr_frames": int(ali.get("tolerance_lfr_frames", 1))}


def _report_drops(imp: A.Imported, exp_dir: str, feats_dir: str, tol: int) -> None:
    """One warning per drop reason, naming the first few utterances."""
    why = {
        "no_features": f"aligned in {exp_dir} but not in {feats_dir}/feats.scp",
        "length_mismatch": f"alignment length differs from the feature frames by more than "
                           f"{tol} LFR frame(s); were the features computed differently?",
        "empty_alignment": "empty alignment",
    }
    for reason, utts in imp.dropped.items():
        if utts:
            warn(f"dropped {len(utts)} utterance(s), {why[reason]} (first: {', '.join(utts[:SHOW])})")
    if imp.no_alignment:
        warn(f"{len(imp.no_alignment)} utterance(s) of {feats_dir}/feats.scp have no alignment "
             f"(alignment failures?) and get no targets (first: {', '.join(imp.no_alignment[:SHOW])})")


def write_int_table(out_tmp: str, out_final: str, name: str, table: dict) -> None:
    """NAME.ark/NAME.scp of int32 vectors; the scp points at the ark's final location."""
    ark, scp = os.path.join(out_tmp, name + ".ark"), os.path.join(out_tmp, name + ".scp")
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as w:
        for utt, vec in table.items():
            w(utt, vec.astype("<i4", copy=False))
    # kaldiio wrote the temporary ark path into the scp; offsets stay valid after the rename.
    final_ark = os.path.join(out_final, name + ".ark")
    with open(scp) as f:
        lines = [ln.split(" ", 1) for ln in f.read().splitlines()]
    with open(scp, "w") as f:
        for utt, loc in lines:
            f.write(f"{utt} {final_ark}:{loc.rsplit(':', 1)[1]}\n")


@contextlib.contextmanager
def building_dir(out: str):
    """A fresh ``OUT.tmpPID`` dir; on success it replaces OUT, on failure it is removed."""
    tmp = f"{out.rstrip(os.sep)}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        old = f"{out.rstrip(os.sep)}.old{os.getpid()}"
        if os.path.exists(out):
            os.replace(out, old)   # a directory can't be os.replace'd onto a non-empty one
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(exp: A.ExpDir, imp: A.Imported, counts, frames: dict, args, params: dict,
              s: dict) -> dict:
    """The info.json / results JSON."""
    tree_path = os.path.join(exp.path, "tree")
    return {
        "stage": "import_alignments",
        "exp_dir": exp.path, "feats_dir": args.feats_dir, "out_dir": args.out_dir,
        "model": {"sha256": A.file_sha256(exp.model_path), "binary": exp.model_binary,
                  "num_pdfs": exp.num_pdfs, "num_transition_ids": exp.tm.num_transition_ids(),
                  "num_phones": len(exp.tm.phones()),
                  "tree_sha256": A.file_sha256(tree_path) if exp.tree is not None else None},
        "ali_files": [os.path.basename(p) for p in exp.ali_files],
        "utterances": {
            "imported": len(imp.targets), "with_features": len(frames),
            "features_without_alignment": len(imp.no_alignment),
            "padded": imp.padded, "trimmed": imp.trimmed,
            "dropped": {r: len(u) for r, u in imp.dropped.items()},
            "dropped_first": {r: u[:SHOW] for r, u in imp.dropped.items() if u},
        },
        "frames": {"10ms": imp.frames_10ms, "lfr": imp.frames_lfr},
        "senones": {"total": exp.num_pdfs, "seen": int((counts > 0).sum())},
        "settings": s,
        "params": {"profile": params.get("profile"), "features": params.get("features"),
                   "alignments": params.get("alignments")},
        "code_version": config.code_version(),
    }


def run(args) -> dict:
    params = config.load_params(args.params, args.profile)
    s = _settings(params)
    for other in (args.exp_dir, args.feats_dir):
        if os.path.abspath(args.out_dir) == os.path.abspath(other):
            raise A.AlignmentError(f"{args.out_dir}: output dir must differ from the exp and "
                                   f"features dirs (it is replaced as a whole)")
    exp = A.load_exp_dir(args.exp_dir, require_tree=True)
    frames = A.num_feature_frames(args.feats_dir)
    with tqdm(desc=f"{PROG} {os.path.basename(args.exp_dir.rstrip(os.sep))}", unit="utt",
              total=len(frames), disable=not sys.stderr.isatty()) as bar:
        imp = A.import_alignments(exp, frames, s["lfr_stack"], s["lfr_skip"],
                                  s["tolerance_lfr_frames"], progress=bar)
    _report_drops(imp, args.exp_dir, args.feats_dir, s["tolerance_lfr_frames"])
    if not imp.targets:
        raise A.AlignmentError(f"{args.feats_dir}/feats.scp: no aligned utterance is usable "
                               f"({sum(map(len, imp.dropped.values()))} dropped); pass the features "
                               f"data dir the alignments were made from")
    counts = A.senone_counts(imp.targets.values(), exp.num_pdfs)
    info = summarize(exp, imp, counts, frames, args, params, s)
    with building_dir(args.out_dir) as tmp:
        write_int_table(tmp, args.out_dir, "targets", imp.targets)
        write_int_table(tmp, args.out_dir, "phone_targets", imp.phone_targets)
        # every 10 ms label of each LFR row, flattened (`data.window_targets`)
        write_int_table(tmp, args.out_dir, "window_targets",
                        {u: w.reshape(-1) for u, w in imp.window_targets.items()})
        with open(os.path.join(tmp, "senone_counts"), "w") as f:
            A.write_counts(f, counts)
        with open(os.path.join(tmp, "num_senones"), "w") as f:
            f.write(f"{exp.num_pdfs}\n")
        # The model and tree travel with the targets: pdf ids only mean something with them.
        for name in ("final.mdl", "tree", "phones.txt"):
            if os.path.isfile(os.path.join(exp.path, name)):
                shutil.copyfile(os.path.join(exp.path, name), os.path.join(tmp, name))
        write_json(os.path.join(tmp, "info.json"), info)
    if args.results:
        write_json(args.results, info)
    return info


def main(argv=None) -> None:
    ap = config.entry_parser(PROG, __doc__)
    ap.add_argument("--results", default=None, help="also write the summary JSON here "
                                                    "(e.g. results/import.json)")
    ap.add_argument("exp_dir", help="Kaldi exp dir: final.mdl, tree, ali.*.gz [, num_jobs, phones.txt]")
    ap.add_argument("feats_dir", help="features data dir: feats.scp [, utt2num_frames]")
    ap.add_argument("out_dir", help="output dir (e.g. exp/targets), replaced when complete")
    args = ap.parse_args(argv)
    try:
        info = run(args)
    except A.AlignmentError as e:
        sys.exit(f"{PROG}: error: {e}")
    u, fr = info["utterances"], info["frames"]
    print(f"{PROG}: {args.out_dir}: {u['imported']} utterances, {fr['10ms']} frames "
          f"({fr['lfr']} LFR), {info['senones']['seen']}/{info['senones']['total']} senones seen, "
          f"dropped {sum(u['dropped'].values())}")


if __name__ == "__main__":
    main()
