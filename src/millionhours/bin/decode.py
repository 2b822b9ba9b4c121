"""Decode a data set through HCLG and score it: Kaldi's steps/decode.sh + local/score.sh.

Usage: python -m millionhours.bin.decode [--params P] [--profile X] [--acwt A | --tune-on DEV_DECODE]
           [--counts C] [--nj N] [--name NAME] [--set-name SET] [--results-dir R]
           [--also DATA_DIR=DECODE_DIR ...] MODEL GRAPH_DIR DATA_DIR DECODE_DIR

  e.g. python -m millionhours.bin.decode --counts exp/targets/train_labeled/senone_counts \\
           --name teacher exp/teacher/final.pt exp/graph data/fbank/dev exp/decode/teacher/dev
       python -m millionhours.bin.decode --tune-on exp/decode/teacher/dev \\
           --counts exp/targets/train_labeled/senone_counts --name teacher \\
           exp/teacher/final.pt exp/graph data/fbank/test_clean exp/decode/teacher/test_clean
       python -m millionhours.bin.decode --name gmm exp/tri exp/graph data/fbank/dev exp/decode/gmm/dev
       python -m millionhours.bin.decode --name gmm --also data/fbank/test_clean=exp/decode/gmm/test_clean \
           exp/tri exp/graph data/fbank/dev exp/decode/gmm/dev

MODEL is an nnet final.pt (its senone priors come from --counts, default senone_counts beside
it) or a GMM exp dir with final.mdl (the stage-2 baseline). GRAPH_DIR comes from make_graph
(or is any Kaldi graph dir with HCLG.fst and words.txt: then pass --trans-model FINAL_MDL).
DATA_DIR is any Kaldi data dir; without feats.scp its fbank features are computed into
DECODE_DIR/data first.

The acoustic scale: --acwt A uses A; --tune-on DEV_DECODE reuses the scale chosen on dev
(DEV_DECODE/acwt, from the same model); neither sweeps params ``decode.acwt_sweep`` (the list
named by final.pt's role, teacher or student, if there is one, else nnet or gmm; scales per
10 ms of audio, so x3 on a 30 ms LFR graph) and keeps the lowest WER (DATA_DIR must then have
``text``); with ``decode.lattice_beam > 0`` the sweep rescores one lattice per utterance
(Kaldi's LMWT loop) instead of searching once per scale. --also DATA_DIR=DECODE_DIR
(repeatable) then decodes more sets at the scale chosen on DATA_DIR, with the graph and model
loaded once (the recipe decodes dev and the test sets in one call per model). DECODE_DIR gets scoring/ACWT.{txt,wer} for
each swept scale, text (the hypotheses), per_utt (Kaldi's layout), acwt, wer and info.json;
--results-dir gets NAME__SET.json. Without DATA_DIR/text the hypotheses are written and
scoring is skipped.
"""
import os
import sys
from dataclasses import dataclass

from millionhours.toolchain import khg   # noqa: F401  (first: the native packages' import order)
from millionhours import config, datadir, features, kaldi_io, scoring
from millionhours import decode as dec
from millionhours import graph as graphmod
from millionhours.fileio import atomic_open, file_sha256, read_json, write_json

PROG = "decode"


def err(msg: str):
    sys.exit(f"{PROG}: error: {msg}")


def ensure_features(data_dir: str, decode_dir: str, params: dict, nj: int) -> str:
    """DATA_DIR if it has features, else DECODE_DIR/data with fbank computed from its wav.scp."""
    if not os.path.isdir(data_dir):
        raise dec.DecodeError(f"{data_dir}: not a directory; pass a Kaldi data dir")
    if os.path.isfile(os.path.join(data_dir, "feats.scp")):
        if not os.path.isfile(os.path.join(data_dir, "utt2spk")):
            raise dec.DecodeError(f"{data_dir}/utt2spk: missing; every Kaldi data dir needs it")
        return data_dir
    if not os.path.isfile(os.path.join(data_dir, "wav.scp")):
        raise dec.DecodeError(f"{data_dir}: has neither feats.scp nor wav.scp; pass a Kaldi "
                              f"data dir with audio or features")
    from millionhours.bin.compute_features import compute_features
    out = os.path.join(decode_dir, "data")
    print(f"{PROG}: {data_dir}/feats.scp missing; computing fbank into {out}", file=sys.stderr)
    compute_features(data_dir, out, features.FbankConfig.from_params(params["features"]), nj)
    return out


def choose_acwts(args, kind: str, role, dp: dict, has_text: bool, model_sha: str, data_dir: str,
                 fsf: int = 1):
    """(scales to decode at, where the scale comes from). The sweep lists of params are per
    10 ms of audio: a graph frame of ``fsf`` 10 ms frames (the LFR graph's 30 ms row) carries
    ``fsf`` times the evidence weight, so its scale is ``fsf`` x the listed one."""
    if args.acwt is not None:
        return [float(args.acwt)], "--acwt"
    if args.tune_on:
        path = os.path.join(args.tune_on, "info.json")
        if not os.path.isfile(path):
            raise dec.DecodeError(f"{path}: missing; --tune-on needs a finished dev decode dir "
                                  f"(decode dev without --acwt first)")
        info = read_json(path)
        if info.get("model_sha256") != model_sha:
            raise dec.DecodeError(f"{args.tune_on}: was decoded with another model "
                                  f"({info.get('model')}); tune on a dev decode of this model")
        if info.get("acwt") is None:
            raise dec.DecodeError(f"{path}: has no chosen acoustic scale (dev was not scored); "
                                  f"decode a dev set that has text")
        return [float(info["acwt"])], f"tuned on {args.tune_on}"
    sweeps = dp.get("acwt_sweep") or {}
    sweep = sweeps.get(role) or sweeps.get(kind)     # the model's own list, else its kind's
    if not sweep:
        raise dec.DecodeError(f"params decode.acwt_sweep.{kind}: missing; list the acoustic "
                              f"scales to try, or pass --acwt")
    if not has_text:
        raise dec.DecodeError(f"{data_dir}/text: missing, so the acoustic scale cannot be tuned "
                              f"here; pass --acwt A or --tune-on DEV_DECODE_DIR")
    return [round(float(a) * fsf, 6) for a in sweep], "sweep (lowest WER)"


def read_vocab(graph_dir: str, id2word: dict) -> set:
    path = os.path.join(graph_dir, "vocab.txt")
    if os.path.isfile(path):
        return set(open(path, encoding="utf-8").read().split())
    return {w for w in id2word.values() if w not in ("<eps>", "<s>", "</s>") and
            not w.startswith("#")}


def fmt(a: float) -> str:
    return f"{a:g}"


def write_hyps(path: str, hyps: dict, utts: list) -> None:
    with atomic_open(path) as f:
        f.writelines(f"{u} {hyps.get(u, '')}".rstrip() + "\n" for u in utts)


def run(args, params: dict) -> list[dict]:
    """Decodes DATA_DIR (sweeping or given the scale), then each --also set at the scale chosen
    there, with the graph and model loaded once; returns the info of each set."""
    dp = params.get("decode") or {}
    nj = config.num_jobs(args.nj if args.nj is not None else dp.get("nj", 0))
    try:
        also = config.split_pairs(args.also, "--also", "DATA_DIR=DECODE_DIR",
                                  "data/fbank/test_clean=exp/decode/teacher/test_clean")
    except ValueError as e:
        raise dec.DecodeError(str(e)) from None
    for d in [args.data] + [d for d, _ in also]:
        if not os.path.isdir(d):
            raise dec.DecodeError(f"{d}: not a directory; pass a Kaldi data dir")
    graph = graphmod.load_graph(args.graph, args.trans_model)
    scorer, tm = dec.load_scorer(args.model, params, args.counts, graph_fsf=graph.fsf)
    dec.check_model_graph(scorer, tm, graph, args.model)
    model_file = args.model if os.path.isfile(args.model) else os.path.join(args.model, "final.mdl")
    model_sha = file_sha256(model_file)
    has_text = os.path.isfile(os.path.join(args.data, "text"))
    # every input check before the (possibly long) feature computation
    acwts, source = choose_acwts(args, scorer.kind, scorer.role, dp, has_text, model_sha, args.data,
                                 graph.fsf)
    if also and not has_text and len(acwts) > 1:
        raise dec.DecodeError(f"{args.data}/text: missing, so no scale can be chosen for --also")
    job = _Job(params, dp, nj, graph, scorer, model_sha, dec.SearchConfig.from_params(dp))
    infos = [decode_one(args, job, args.data, args.decode_dir, acwts, source, args.set_name)]
    for data, decode_dir in also:
        infos.append(decode_one(args, job, data, decode_dir, [infos[0]["acwt"]],
                                f"tuned on {args.decode_dir}", None))
    return infos


@dataclass
class _Job:
    """What every set of one decode call shares: params, the loaded graph and model."""
    params: dict
    dp: dict
    nj: int
    graph: object
    scorer: object
    model_sha: str
    cfg: dec.SearchConfig


def decode_one(args, job: _Job, data: str, decode_dir: str, acwts: list, source: str,
               set_name: str | None) -> dict:
    """Decodes one data dir at each scale of ``acwts``, scores it (the lowest WER's scale wins)
    and writes the decode dir and, with --results-dir, NAME__SET.json; returns its info."""
    params, dp, nj, graph, scorer, cfg = (job.params, job.dp, job.nj, job.graph, job.scorer,
                                          job.cfg)
    text_path = os.path.join(data, "text")
    has_text = os.path.isfile(text_path)
    feats_dir = ensure_features(data, decode_dir, params, nj)
    out = dec.decode_set(scorer, graph, feats_dir, acwts, cfg, nj,
                         progress=sys.stderr.isatty())
    os.makedirs(decode_dir, exist_ok=True)
    refs = datadir.read_table(text_path, required=False) if has_text else None
    refs = {u: refs.get(u, "") for u in out.utts} if refs is not None else None
    vocab = read_vocab(args.graph, graph.id2word)
    lexicon = set(graph.id2word.values())
    sweep, best = {}, acwts[0]
    if refs is not None:
        for a in acwts:
            s, _ = scoring.score_set(refs, out.hyps[a], vocab)
            sweep[fmt(a)] = s["wer"]
            if len(acwts) > 1:
                write_hyps(os.path.join(decode_dir, "scoring", f"{fmt(a)}.txt"), out.hyps[a], out.utts)
                with atomic_open(os.path.join(decode_dir, "scoring", f"{fmt(a)}.wer")) as f:
                    f.write(wer_line(s) + "\n")
        best = min(acwts, key=lambda a: (sweep[fmt(a)], acwts.index(a)))
    write_hyps(os.path.join(decode_dir, "text"), out.hyps[best], out.utts)
    frame_shift = float(params["features"].get("frame_shift_ms", 10.0)) / 1000.0
    audio_s = out.frames * frame_shift
    searches = 1 if cfg.lattice_beam > 0 and len(acwts) > 1 else len(acwts)   # lattice: one search
    info = {"model": args.model, "model_kind": scorer.kind, "model_sha256": job.model_sha,
            "graph": args.graph, "graph_stamp": _stamp(args.graph), "data": data,
            "decode_dir": decode_dir,
            "features": feats_dir, "set": set_name or os.path.basename(os.path.normpath(data)),
            "acwt": best if refs is not None or len(acwts) == 1 else None,
            "acwt_source": source, "acwt_sweep": sweep or None,
            "utterances": len(out.utts), "frames": out.frames, "audio_s": round(audio_s, 2),
            "partial": len(out.partial[best]),
            "rtf_forward": round(out.forward_s / audio_s, 5) if audio_s else None,
            "rtf_search": round(out.search_s / searches / audio_s, 5) if audio_s else None,
            "forward_s": round(out.forward_s, 2), "search_s": round(out.search_s, 2),
            "wall_s": round(out.wall_s, 2), "nj": nj, "search": vars(cfg),
            "device": getattr(scorer, "device", "cpu"), "threads": dp.get("threads", 1),
            "frame_repeat": getattr(scorer, "frame_repeat", 1), "graph_fsf": graph.fsf,
            "upsample": getattr(scorer, "upsample", None),
            "prior_scale": dp.get("prior_scale") if scorer.kind == "nnet" else None,
            "params": {"decode": dp, "lm": params.get("lm"), "profile": params.get("profile")},
            "params_hash": config.params_hash({"decode": dp, "lm": params.get("lm")}),
            "code_version": config.code_version()}
    with atomic_open(os.path.join(decode_dir, "acwt")) as f:
        f.write(f"{fmt(best)}\n")
    if refs is None:
        info["scored"] = False
        write_json(os.path.join(decode_dir, "info.json"), info)
        return info
    summary, scores = scoring.score_set(refs, out.hyps[best], vocab)
    summary["oov_lexicon_words"] = sum(w not in lexicon for s in scores for w in s.ref)
    scoring.write_per_utt(os.path.join(decode_dir, "per_utt"), scores)
    with atomic_open(os.path.join(decode_dir, "wer")) as f:
        f.write(wer_line(summary) + "\n")
    info.update(summary, scored=True, name=args.name,
                utt_errors=scoring.utt_error_counts(scores))   # tables' paired bootstrap
    write_json(os.path.join(decode_dir, "info.json"), info)
    if args.results_dir:
        write_json(os.path.join(args.results_dir, f"{args.name}__{info['set']}.json"), info)
    return info


def _stamp(graph_dir: str):
    p = os.path.join(graph_dir, "stamp.json")
    return read_json(p) if os.path.isfile(p) else None


def wer_line(s: dict) -> str:
    """compute-wer's summary line."""
    return (f"%WER {s['wer']:.2f} [ {s['errors']} / {s['ref_words']}, {s['insertions']} ins, "
            f"{s['deletions']} del, {s['substitutions']} sub ] %SER {s['ser']:.2f} "
            f"[ {s['sentence_errors']} / {s['sentences']} ]")


def main(argv=None) -> None:
    ap = config.entry_parser(PROG, __doc__)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--acwt", type=float, default=None, help="acoustic scale (no sweep)")
    g.add_argument("--tune-on", default=None, metavar="DEV_DECODE_DIR",
                   help="use the acoustic scale chosen in this dev decode dir")
    ap.add_argument("--counts", default=None, help="senone counts for the nnet's priors "
                    "(default: senone_counts beside MODEL)")
    ap.add_argument("--trans-model", default=None,
                    help="final.mdl the graph was built with (default GRAPH_DIR/trans.mdl)")
    ap.add_argument("--nj", type=int, default=None, help="search jobs (default decode.nj; 0 = all cores)")
    ap.add_argument("--name", default=None, help="model name in results (default: MODEL's dir name)")
    ap.add_argument("--set-name", default=None, help="set name in results (default: DATA_DIR's name)")
    ap.add_argument("--results-dir", default=None, help="write NAME__SET.json here (e.g. results)")
    ap.add_argument("--also", action="append", default=[], metavar="DATA_DIR=DECODE_DIR",
                    help="then decode this set too, at the scale chosen on DATA_DIR (repeatable)")
    ap.add_argument("model", help="nnet final.pt or GMM exp dir, e.g. exp/teacher/final.pt")
    ap.add_argument("graph", help="graph dir, e.g. exp/graph")
    ap.add_argument("data", help="Kaldi data dir, e.g. data/fbank/dev")
    ap.add_argument("decode_dir", help="output decode dir, e.g. exp/teacher/decode_dev")
    args = ap.parse_args(argv)
    params = config.load_params(args.params, args.profile)
    args.name = args.name or os.path.basename(os.path.normpath(
        args.model if os.path.isdir(args.model) else os.path.dirname(os.path.abspath(args.model))))
    if args.acwt is not None and args.acwt <= 0:
        err(f"--acwt {args.acwt}: the acoustic scale must be positive (Kaldi uses ~0.1)")
    try:
        infos = run(args, params)
    except (dec.DecodeError, graphmod.GraphError, datadir.DataDirError,
            kaldi_io.KaldiFormatError) as e:
        err(str(e))
    for info in infos:
        if not info.get("scored"):
            print(f"{PROG}: {info['data']}/text missing: wrote hypotheses to "
                  f"{info['decode_dir']}/text, scoring skipped")
            continue
        sweep = f" (sweep {info['acwt_sweep']})" if info["acwt_sweep"] and len(info["acwt_sweep"]) > 1 else ""
        print(f"{PROG}: {info['name']} {info['set']}: {wer_line(info)}; acwt {fmt(info['acwt'])}"
              f"{sweep}; OOV {info['oov_rate']:.2f}%; RTF forward {info['rtf_forward']:.4f} "
              f"search {info['rtf_search']:.4f} (nj {info['nj']}); {info['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
