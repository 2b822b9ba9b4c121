"""Stage 2: monophone then triphone GMM-HMM training and alignment (a Kaldi exp dir).

Usage: python -m millionhours.bin.train_gmm [--params P] [--profile X] [--nj N]
           [--results results/alignment.json] DATA_FBANK_DIR LANG_DIR EXP_DIR

  e.g. python -m millionhours.bin.train_gmm data/fbank/train_labeled_clean data/lang exp/tri

Mirrors steps/train_mono.sh (EXP_DIR/mono), steps/train_deltas.sh (EXP_DIR/tri1 when LDA+MLLT
follows), steps/train_lda_mllt.sh (with ``gmm.lda_mllt.enabled``) and steps/align_si.sh
(EXP_DIR). DATA_FBANK_DIR is a stage-1 data dir (feats.scp, text, utt2spk; phones.ctm, the
synthesizer's phone timings, is optional and only scored); LANG_DIR comes from
millionhours.bin.prepare_lang. EXP_DIR gets tree, final.mdl (Kaldi binary), final.mat and
splice_opts (LDA+MLLT only), ali.N.gz (transition-ids, N = 1..num_jobs), num_jobs, phones.txt;
final.mdl is written last, so an exp dir without it is incomplete. Other sets (dev, the oracle
transcripts of the unlabeled set) are aligned with millionhours.bin.align_gmm.
--results gets phone-boundary accuracy against phones.ctm, model sizes, likelihoods, timings.
"""
import dataclasses
import gzip
import os
import re
import shutil
import sys
import time

import kaldiio
import numpy as np
from tqdm import tqdm

from millionhours.toolchain import khg   # first: the native packages' import order
from millionhours import config, datadir, gmm, kaldi_io
from millionhours import lang as langmod
from millionhours import tree as T
from millionhours.alignments import write_alis
from millionhours.fileio import atomic_open, atomic_path, write_json


class InputError(Exception):
    """A missing or unusable input; the message is one line naming the file and the fix."""


def _need(path: str, fix: str) -> str:
    if not os.path.exists(path):
        raise InputError(f"{path}: missing; {fix}")
    return path


def check_data(d: str, need_text: bool = True) -> None:
    stage1 = "run stage 1 (millionhours.bin.compute_features) for this set"
    _need(d, stage1)
    _need(os.path.join(d, "feats.scp"), stage1)
    _need(os.path.join(d, "utt2spk"), "every Kaldi data dir needs it")
    if need_text:
        _need(os.path.join(d, "text"), "training needs transcripts")


def check_lang(d: str) -> None:
    fix = f"run `python -m millionhours.bin.prepare_lang LEXICON {d}`"
    for name in ("phones.txt", "words.txt", "topo", "L.fst", "L_disambig.fst", "oov.txt",
                 "lexicon.txt", "phones/roots.int", "phones/silence.txt",
                 "phones/optional_silence.txt"):
        _need(os.path.join(d, name), fix)


def read_data(d: str, text_path: str | None = None):
    """(utts, utt2spk, text) of a data dir; text from ``text_path`` if given."""
    utt2spk = datadir.read_table(os.path.join(d, "utt2spk"))
    text = datadir.read_table(text_path or os.path.join(d, "text"))
    scp = set(datadir.read_table(os.path.join(d, "feats.scp")))
    utts = [u for u in utt2spk if u in scp and u in text]
    if not utts:
        raise InputError(f"{d}: no utterance has features and a transcript; check feats.scp "
                         f"and text")
    return utts, utt2spk, text


# ----------------------------------------------------------------------------------------------
# Writing the exp dir
# ----------------------------------------------------------------------------------------------

def write_exp(out_dir: str, system: gmm.GmmSystem, shards: list, alis: dict,
              lang_dir: str, splice: int = 0) -> None:
    """A Kaldi exp dir: tree, final.mat + splice_opts (LDA+MLLT), ali.N.gz, num_jobs,
    phones.txt, then final.mdl (last)."""
    os.makedirs(out_dir, exist_ok=True)
    final = os.path.join(out_dir, "final.mdl")
    if os.path.exists(final):
        os.remove(final)                     # the dir is incomplete until final.mdl is back
    kaldi_io.write_tree(os.path.join(out_dir, "tree"), kaldi_io.tree_from_khg(system.ctx_dep))
    write_transform(out_dir, system.transform, splice)
    write_alis(out_dir, shards, alis)
    with atomic_open(os.path.join(out_dir, "phones.txt")) as f, \
            open(os.path.join(lang_dir, "phones.txt")) as g:
        shutil.copyfileobj(g, f)
    kaldi_io.write_model(final, *kaldi_io.from_khg(system.tm, system.am))


def write_transform(out_dir: str, mat, splice: int) -> None:
    """final.mat (Kaldi binary matrix) and splice_opts of an LDA+MLLT system; removes stale
    ones when ``mat`` is None."""
    paths = [os.path.join(out_dir, n) for n in ("final.mat", "splice_opts")]
    if mat is None:
        for p in paths:
            if os.path.exists(p):
                os.remove(p)
        return
    with atomic_path(paths[0]) as tmp:
        kaldiio.save_mat(tmp, np.asarray(mat, np.float32))
    with atomic_open(paths[1]) as f:
        f.write(f"--left-context={splice} --right-context={splice}\n")


def read_transform(exp_dir: str):
    """(final.mat, splice context) of an exp dir, or (None, 0) for a delta-feature system."""
    mat_path = os.path.join(exp_dir, "final.mat")
    if not os.path.isfile(mat_path):
        return None, 0
    opts = _need(os.path.join(exp_dir, "splice_opts"), "an exp dir with final.mat needs the "
                                                        "splice_opts it was trained with")
    with open(opts) as f:
        ctx = {k: int(v) for k, v in (w.lstrip("-").split("=") for w in f.read().split())}
    if ctx.get("left-context") != ctx.get("right-context"):
        raise InputError(f"{opts}: only symmetric splicing is supported")
    return kaldiio.load_mat(mat_path), ctx["left-context"]


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------

def score_boundaries(tm, alis: dict, ctm_path: str, lang: langmod.Lang,
                     data_dir: str | None = None) -> dict | None:
    """Boundary accuracy of ``alis`` against a phones.ctm (None if there is no ctm), overall
    and, where the data dir has ``utt2corruption``, per condition (clean, noise only,
    reverberated): the ctm holds the dry signal's timings, which reverberation smears."""
    if not os.path.isfile(ctm_path):
        return None
    id2phone = {i: p for p, i in lang.phones.items()}
    hyp = {u: [(id2phone[p], s, e) for p, s, e in gmm.phone_segments(tm, a)]
           for u, a in alis.items()}
    ref = gmm.read_phones_ctm(ctm_path)
    out = gmm.boundary_accuracy(ref, hyp)
    out["ctm"] = ctm_path
    cond_path = os.path.join(data_dir or os.path.dirname(ctm_path), "utt2corruption")
    if os.path.isfile(cond_path):
        cond = {u: ("clean" if c == "clean" else "reverb" if "rir=" in c else "noise")
                for u, c in datadir.read_table(cond_path).items()}
        out["by_condition"] = {
            k: gmm.boundary_accuracy({u: r for u, r in ref.items() if cond.get(u) == k}, hyp)
            for k in ("clean", "noise", "reverb")}
    return out


def _bar(total, desc):
    return tqdm(total=total, desc=desc, unit="iter", disable=not sys.stderr.isatty())


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------

def run(data: str, lang_dir: str, exp: str, gp: dict, nj: int) -> dict:
    """Trains mono, tri (and LDA+MLLT), aligns, writes the exp dirs; returns the results dict."""
    t_start = time.time()
    check_data(data)
    check_lang(lang_dir)
    lang = langmod.load_lang(lang_dir)
    utts, utt2spk, text = read_data(data)
    word_ids = gmm.text_to_word_ids(text, lang)
    fcfg = gmm.FeatConfig.from_params(gp.get("feats"))
    topo = khg.HmmTopology()
    with open(os.path.join(lang_dir, "topo")) as f:
        topo.read(f.read())
    with open(os.path.join(lang_dir, "phones", "roots.int")) as f:
        roots = T.read_roots(f.read())
    timings = {}
    t = time.time()
    feats = gmm.load_gmm_features(data, utts, utt2spk, fcfg)
    timings["features_s"] = round(time.time() - t, 2)
    frames = sum(len(x) for x in feats.values())
    res = {"data": data, "utterances": len(utts), "frames": frames,
           "oov_words": sum(w not in lang.words for t_ in text.values() for w in t_.split())}
    ctm = os.path.join(data, "phones.ctm")
    mp_, tp, lp = gmm.merged(gp, "mono"), gmm.merged(gp, "tri"), gmm.merged(gp, "lda_mllt")
    lda = bool(lp.get("enabled"))
    with gmm.Aligner(data, utts, utt2spk, word_ids, lang, lang_dir, fcfg, nj) as aligner:
        with _bar(int(mp_["num_iters"]), "mono") as bar:
            mono = gmm.train_mono(topo, feats, aligner, mp_, seed=int(gp.get("seed", 0)),
                                  bar=bar)
        write_exp(os.path.join(exp, "mono"), mono, aligner.shards, mono.alis, lang_dir)
        timings["mono"] = mono.timings
        with _bar(int(tp["num_iters"]) - 1, "tri") as bar:
            tri = gmm.train_tri(mono, feats, aligner, lang, roots, tp, seed=int(gp.get("seed", 0)),
                                bar=bar)
        timings["tri"] = tri.timings
        final, shards = tri, aligner.shards
        if not lda:
            t = time.time()
            alis, info = aligner.align(tri.tm, tri.am, gmm.align_config(gp))
            timings["align_s"] = round(time.time() - t, 2)
    del feats
    res["mono"] = _summary(mono, score_boundaries(mono.tm, mono.alis, ctm, lang))
    res["tri"] = _tree_summary(tri, None)
    if lda:
        write_exp(os.path.join(exp, "tri1"), tri, shards, tri.alis, lang_dir)
        res["tri"]["boundaries"] = score_boundaries(tri.tm, tri.alis, ctm, lang, data)
        lcfg = dataclasses.replace(fcfg, delta_order=0, splice=int(lp["splice"]))
        raw = gmm.load_gmm_features(data, utts, utt2spk, lcfg)
        with gmm.Aligner(data, utts, utt2spk, word_ids, lang, lang_dir, lcfg, nj) as aligner:
            with _bar(int(lp["num_iters"]) - 1, "lda_mllt") as bar:
                final = gmm.train_lda_mllt(tri, raw, aligner, lang, roots, lp,
                                           seed=int(gp.get("seed", 0)), bar=bar)
            timings["lda_mllt"] = final.timings
            t = time.time()
            alis, info = aligner.align(final.tm, final.am, gmm.align_config(gp))
            timings["align_s"] = round(time.time() - t, 2)
        res["lda_mllt"] = _tree_summary(final, None)
        res["lda_mllt"]["mllt_objf_impr"] = {e["iter"]: e["mllt_objf_impr"] for e in final.log
                                             if "mllt_objf_impr" in e}
    write_exp(exp, final, shards, alis, lang_dir, int(lp["splice"]) if lda else 0)
    res["align"] = {"system": "lda_mllt" if lda else "tri", "failed": info["failed"],
                    "retried": info["retried"], "like_per_frame": info["like_per_frame"],
                    "boundaries": score_boundaries(final.tm, alis, ctm, lang, data)}
    timings["total_s"] = round(time.time() - t_start, 2)
    res["timings"] = timings
    return res


def _tree_summary(s: gmm.GmmSystem, boundaries) -> dict:
    out = _summary(s, boundaries)
    out.update(leaves=int(s.tree.num_pdfs), leaves_before_merge=int(
        s.tree.num_leaves_before_cluster), questions=s.num_questions)
    return out


def _summary(s: gmm.GmmSystem, boundaries) -> dict:
    out = {"pdfs": int(s.am.num_pdfs), "gaussians": int(s.am.num_gauss),
           "transition_ids": int(s.tm.num_transition_ids),
           "like_per_frame": [round(e["like_per_frame"], 4) for e in s.log],
           "align_like_per_frame": {e["iter"]: round(e["align_like_per_frame"], 4)
                                    for e in s.log if e.get("align_like_per_frame") is not None},
           "failed_alignments": {e["iter"]: e["failed"] for e in s.log if e.get("failed")}}
    if boundaries is not None:
        out["boundaries"] = boundaries
    return out


def main(argv=None) -> None:
    ap = config.entry_parser("train_gmm", __doc__)
    ap.add_argument("--nj", type=int, default=None, help="alignment jobs (default: gmm.nj)")
    ap.add_argument("--results", default="results/alignment.json",
                    help="results JSON (default results/alignment.json)")
    ap.add_argument("data", help="training data dir with features, e.g. data/fbank/train_labeled")
    ap.add_argument("lang", help="lang dir, e.g. data/lang")
    ap.add_argument("exp", help="output exp dir, e.g. exp/tri")
    args = ap.parse_args(argv)
    params = config.load_params(args.params, args.profile)
    if "gmm" not in params:
        sys.exit(f"train_gmm: {args.params}: no `gmm:` section; add it (see README)")
    gp = params["gmm"]
    nj = config.num_jobs(args.nj if args.nj is not None else gp.get("nj", 2))
    try:
        res = run(args.data, args.lang, args.exp, gp, nj)
    except (InputError, langmod.LangError, datadir.DataDirError) as e:
        sys.exit(f"train_gmm: {e}")
    res.update(params={"gmm": gp, "profile": params.get("profile"), "seed": params.get("seed")},
               code_version=config.code_version(), exp=args.exp)
    write_json(args.results, res)
    b = (res["align"]["boundaries"] or {})
    fin = res[res["align"]["system"]]
    print(f"train_gmm: {args.exp}: {res['align']['system']}, {fin['pdfs']} pdfs, "
          f"{fin['gaussians']} Gaussians, {res['utterances']} utterances aligned "
          f"({len(res['align']['failed'])} failed); boundaries within 10/20 ms: "
          f"{b.get('within_10ms')}/{b.get('within_20ms')}; {res['timings']['total_s']:.0f} s")


if __name__ == "__main__":
    main()
