"""Align a data set with a trained GMM system: Kaldi's steps/align_si.sh.

Usage: python -m millionhours.bin.align_gmm [--params P] [--profile X] [--nj N] [--text TEXT]
           [--results R] DATA_FBANK_DIR LANG_DIR SRC_EXP OUT_ALI_DIR

  e.g. python -m millionhours.bin.align_gmm data/fbank/dev data/lang exp/tri exp/tri_ali_dev
       python -m millionhours.bin.align_gmm --text data/corpus/oracle/train_unlabeled/text \\
           data/fbank/train_unlabeled data/lang exp/tri exp/tri_ali_unlabeled_oracle

SRC_EXP is a train_gmm exp dir (final.mdl, tree; final.mat + splice_opts for an LDA+MLLT
system). The transcripts come from DATA_FBANK_DIR/text, or from --text (e.g. the oracle
transcripts of the unlabeled set, an analysis-only alignment). OUT_ALI_DIR gets copies of
final.mdl, tree (and final.mat, splice_opts), ali.N.gz, num_jobs and phones.txt; final.mdl is
written last, so a dir without it is incomplete. Alignments are scored against the phones.ctm
beside the transcripts (DATA_FBANK_DIR/phones.ctm, or the one next to --text) when there is one;
--results gets that score, failures and timings as JSON. Features and beams come from the
params' ``gmm`` section, which must match the training's.
"""
import dataclasses
import os
import shutil
import sys
import time

from millionhours.toolchain import khg   # noqa: F401  (first: the native packages' import order)
from millionhours import config, datadir, gmm, kaldi_io
from millionhours import lang as langmod
from millionhours.bin.train_gmm import (InputError, check_data, check_lang, read_data,
                                        read_transform, score_boundaries,
                                        write_transform, _need)
from millionhours.alignments import write_alis
from millionhours.fileio import atomic_open, atomic_path, write_json


def load_system(src: str):
    """(khg TransitionModel, khg AmDiagGmm, khg ContextDependency, final.mat or None, splice)
    of an exp dir, read by millionhours.kaldi_io and converted to kaldi-hmm-gmm objects."""
    fix = "pass an exp dir written by millionhours.bin.train_gmm"
    tm, am = kaldi_io.read_model(_need(os.path.join(src, "final.mdl"), fix))
    if am is None:
        raise InputError(f"{src}/final.mdl: has no GMM; {fix}")
    tree = kaldi_io.read_tree(_need(os.path.join(src, "tree"), fix))
    ktm, kam = kaldi_io.to_khg(tm, am)
    mat, splice = read_transform(src)
    return ktm, kam, kaldi_io.tree_to_khg(tree), mat, splice


def copy_model(src: str, out: str) -> None:
    """tree, final.mat/splice_opts and phones.txt; final.mdl comes last (completion marker)."""
    for name in ("tree", "final.mat", "splice_opts"):
        if os.path.isfile(os.path.join(src, name)):
            with atomic_path(os.path.join(out, name)) as tmp:
                shutil.copyfile(os.path.join(src, name), tmp)


def run(data: str, lang_dir: str, src: str, out: str, gp: dict, nj: int,
        text_path: str | None = None) -> dict:
    t0 = time.time()
    check_data(data, need_text=text_path is None)
    check_lang(lang_dir)
    if text_path:
        _need(text_path, "pass a transcript file (utt word ...)")
    tm, am, ctx, mat, splice = load_system(src)
    lang = langmod.load_lang(lang_dir)
    utts, utt2spk, text = read_data(data, text_path)
    fcfg = gmm.FeatConfig.from_params(gp.get("feats"))
    if mat is not None:       # LDA+MLLT: spliced static cepstra, then final.mat
        fcfg = dataclasses.replace(fcfg, delta_order=0, splice=splice)
    with gmm.Aligner(data, utts, utt2spk, gmm.text_to_word_ids(text, lang), lang, lang_dir,
                     fcfg, nj) as al:
        if mat is not None:
            al.set_transform(mat)
        al.compile(tm, ctx)
        alis, info = al.align(tm, am, gmm.align_config(gp))
        shards = al.shards
    os.makedirs(out, exist_ok=True)
    final = os.path.join(out, "final.mdl")
    if os.path.exists(final):
        os.remove(final)
    if mat is None:
        write_transform(out, None, 0)       # no stale final.mat from an earlier run
    copy_model(src, out)
    write_alis(out, shards, alis)
    with atomic_open(os.path.join(out, "phones.txt")) as f, \
            open(os.path.join(lang_dir, "phones.txt")) as g:
        shutil.copyfileobj(g, f)
    with atomic_path(final) as tmp:
        shutil.copyfile(os.path.join(src, "final.mdl"), tmp)
    ctm = os.path.join(os.path.dirname(os.path.abspath(text_path)) if text_path else data,
                       "phones.ctm")
    return {"data": data, "src": src, "dir": out, "text": text_path or
            os.path.join(data, "text"), "utterances": len(utts), "aligned": len(alis),
            "failed": info["failed"], "retried": info["retried"],
            "like_per_frame": info["like_per_frame"],
            "boundaries": score_boundaries(tm, alis, ctm, lang, data),
            "timings": {"total_s": round(time.time() - t0, 2)}}


def main(argv=None) -> None:
    ap = config.entry_parser("align_gmm", __doc__)
    ap.add_argument("--nj", type=int, default=None, help="alignment jobs (default: gmm.nj)")
    ap.add_argument("--text", default=None, help="transcripts to align with (default DATA/text)")
    ap.add_argument("--results", default=None, help="results JSON (default: none)")
    ap.add_argument("data", help="data dir with features, e.g. data/fbank/dev")
    ap.add_argument("lang", help="lang dir, e.g. data/lang")
    ap.add_argument("src", help="exp dir of the trained system, e.g. exp/tri")
    ap.add_argument("out", help="output alignment dir, e.g. exp/tri_ali_dev")
    args = ap.parse_args(argv)
    params = config.load_params(args.params, args.profile)
    gp = params.get("gmm") or {}
    nj = config.num_jobs(args.nj if args.nj is not None else gp.get("nj", 2))
    try:
        res = run(args.data, args.lang, args.src, args.out, gp, nj, args.text)
    except (InputError, langmod.LangError, datadir.DataDirError,
            kaldi_io.KaldiFormatError) as e:
        sys.exit(f"align_gmm: {e}")
    res.update(code_version=config.code_version())
    if args.results:
        write_json(args.results, res)
    b = res["boundaries"] or {}
    print(f"align_gmm: {args.out}: {res['aligned']}/{res['utterances']} utterances aligned "
          f"({len(res['failed'])} failed); boundaries within 10/20 ms: "
          f"{b.get('within_10ms')}/{b.get('within_20ms')}; {res['timings']['total_s']:.0f} s")


if __name__ == "__main__":
    main()
