"""Stage 2: the networks' low-frame-rate tree, Kaldi chain's steps/nnet3/chain/build_tree.sh.

Usage: python -m millionhours.bin.build_tree_lfr [--params P] [--profile X] [--results R]
           [--convert SRC_ALI_DIR=OUT_DIR ...] DATA_DIR LANG_LFR_DIR ALI_DIR TREE_DIR

  e.g. python -m millionhours.bin.build_tree_lfr --results results/lfr_tree.json \\
           --convert exp/tri_ali_dev=exp/tree_lfr_ali_dev \\
           data/fbank/train_labeled_clean data/lang_lfr exp/tri exp/tree_lfr

DATA_DIR is the stage-1 data dir ALI_DIR's alignments align (its GMM features feed the tree
statistics); LANG_LFR_DIR comes from `make_lfr_lang data/lang LANG_LFR_DIR` (one emitting
state per phone); ALI_DIR is any Kaldi exp dir with final.mdl and 10 ms ali.*.gz (exp/tri). The tree is
built on the alignments subsampled by params `lfr_tree.frame_subsampling_factor` (Kaldi's
--frame-subsampling-factor 3) with `lfr_tree` num_leaves / thresh / cluster_thresh, and its
transition probabilities are estimated at that rate (millionhours.lfr_tree).

TREE_DIR gets tree, final.mdl (the one-state transition model with gmm-init-model's
single-Gaussian pdfs), ali.N.gz (ALI_DIR's alignments in the new tree, still at 10 ms: stage 3
brings them to 30 ms), num_jobs, phones.txt and frame_subsampling_factor; final.mdl last, so a
dir without it is incomplete. Each --convert SRC=OUT writes OUT the same way from another
10 ms alignment dir (convert-ali: dev, the oracle alignments of the unlabeled set).
"""
import os
import shutil
import sys
import time

from millionhours.toolchain import khg   # first: the native packages' import order
from millionhours import alignments as A
from millionhours import config, datadir, gmm, kaldi_io
from millionhours import lang as langmod
from millionhours import lfr_tree as L
from millionhours import tree as T
from millionhours.fileio import atomic_open, atomic_path, write_json

PROG = "build_tree_lfr"


def err(msg: str):
    sys.exit(f"{PROG}: error: {msg}")


def read_ali_dir(path: str):
    """(khg transition model, [(utts of ali.N.gz)], {utt: 10 ms alignment}) of an exp dir."""
    exp = A.load_exp_dir(path, require_tree=False)
    ktm, _ = kaldi_io.to_khg(exp.tm, None)
    shards, alis = [], {}
    for f in exp.ali_files:
        utts = []
        for utt, ali in A.read_alignments(f):
            A.check_tids(exp.tm, ali, f, utt)
            alis[utt] = ali
            utts.append(utt)
        shards.append(utts)
    return ktm, shards, alis


def write_tree_dir(out: str, lt: L.LfrTree, shards: list, alis: dict, lang_dir: str) -> None:
    """A Kaldi tree dir (chain's exp/chain/tree_*): tree, ali.N.gz, num_jobs, phones.txt,
    frame_subsampling_factor, then final.mdl (last)."""
    os.makedirs(out, exist_ok=True)
    final = os.path.join(out, "final.mdl")
    if os.path.exists(final):
        os.remove(final)                    # incomplete until final.mdl is back
    kaldi_io.write_tree(os.path.join(out, "tree"), kaldi_io.tree_from_khg(lt.ctx_dep))
    A.write_alis(out, shards, alis)
    with atomic_path(os.path.join(out, "phones.txt")) as tmp:
        shutil.copyfile(os.path.join(lang_dir, "phones.txt"), tmp)
    with atomic_open(os.path.join(out, "frame_subsampling_factor")) as f:
        f.write(f"{lt.info['frame_subsampling_factor']}\n")
    kaldi_io.write_model(final, *kaldi_io.from_khg(lt.tm, lt.am))


def run(args, params: dict) -> dict:
    t0 = time.time()
    try:
        converts = config.split_pairs(args.convert, "--convert", "SRC_ALI_DIR=OUT_DIR",
                                      "exp/tri_ali_dev=exp/tree_lfr_ali_dev")
    except ValueError as e:
        raise A.AlignmentError(str(e)) from None
    lp, gp = params.get("lfr_tree") or {}, params.get("gmm") or {}
    factor = int(lp.get("frame_subsampling_factor", 3))
    centre = int(params["features"].get("lfr_stack", 3)) // 2
    if factor != int(params["features"].get("lfr_skip", 3)):
        raise A.AlignmentError(f"params lfr_tree.frame_subsampling_factor {factor} differs from "
                               f"features.lfr_skip; the tree's frames must be the networks' rows")
    topo_path = os.path.join(args.lang, "topo")
    if not os.path.isfile(topo_path):
        raise A.AlignmentError(f"{topo_path}: missing; run `python -m millionhours.bin."
                               f"make_lfr_lang data/lang {args.lang}` first")
    topo = khg.HmmTopology()
    with open(topo_path) as f:
        topo.read(f.read())
    with open(os.path.join(args.lang, "phones", "roots.int")) as f:
        roots = T.read_roots(f.read())
    lang = langmod.load_lang(args.lang)
    old_tm, shards, alis = read_ali_dir(args.ali_dir)
    utt2spk = datadir.read_table(os.path.join(args.data, "utt2spk"))
    utts = [u for u in alis if u in utt2spk]
    if not utts:
        raise A.AlignmentError(f"{args.data}: none of the {len(alis)} aligned utterances of "
                               f"{args.ali_dir} is in this data dir; pass the data it aligns")
    feats = gmm.load_gmm_features(args.data, utts, utt2spk, gmm.FeatConfig.from_params(gp.get("feats")))
    try:
        lt = L.build_lfr_tree(old_tm, alis, feats, lang, topo, roots, lp, factor, centre,
                              int(gp.get("seed", 0)))
    except ValueError as e:
        raise A.AlignmentError(f"{args.lang}/topo: {e}") from None
    write_tree_dir(args.tree_dir, lt, shards, lt.alis, args.lang)
    res = {"data": args.data, "ali_dir": args.ali_dir, "tree_dir": args.tree_dir, **lt.info,
           "tree_s": round(time.time() - t0, 2), "converted": {}}
    for src, dst in converts:
        tm_src, sh, al = read_ali_dir(src)
        conv = {u: L.convert_ali(tm_src, lt.tm, lt.ctx_dep, a) for u, a in al.items()}
        write_tree_dir(dst, lt, sh, conv, args.lang)
        res["converted"][src] = {"dir": dst, "utterances": len(conv)}
    res.update(params={"lfr_tree": lp}, total_s=round(time.time() - t0, 2),
               code_version=config.code_version())
    return res


def main(argv=None) -> None:
    ap = config.entry_parser(PROG, __doc__)
    ap.add_argument("--results", default=None, help="results JSON (e.g. results/lfr_tree.json)")
    ap.add_argument("--convert", action="append", default=[], metavar="SRC=OUT",
                    help="also convert the 10 ms alignments of SRC to the new tree into OUT")
    ap.add_argument("data", help="stage-1 data dir the alignments align, e.g. data/fbank/train_labeled_clean")
    ap.add_argument("lang", help="lang dir with the one-state topology, e.g. data/lang_lfr")
    ap.add_argument("ali_dir", help="exp dir with final.mdl and 10 ms ali.*.gz, e.g. exp/tri")
    ap.add_argument("tree_dir", help="output tree dir, e.g. exp/tree_lfr")
    args = ap.parse_args(argv)
    params = config.load_params(args.params, args.profile)
    try:
        res = run(args, params)
    except (A.AlignmentError, langmod.LangError, datadir.DataDirError,
            kaldi_io.KaldiFormatError) as e:
        err(str(e))
    if args.results:
        write_json(args.results, res)
    print(f"{PROG}: {args.tree_dir}: {res['pdfs']} pdfs ({res['leaves_before_merge']} leaves "
          f"before merging) from {res['utterances']} utterances, {res['lfr_frames']} frames at "
          f"1/{res['frame_subsampling_factor']} rate ({res['phones_repaired']} phone lengths "
          f"repaired, {len(res['unconvertible'])} utterances too short); converted "
          f"{len(res['converted'])} dir(s); {res['total_s']:.0f} s")


if __name__ == "__main__":
    main()
