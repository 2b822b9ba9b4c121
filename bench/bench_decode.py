#!/usr/bin/env python
"""Decoding real-time factor on one core: the network forward plus the WFST search.

Usage: python bench/bench_decode.py [--params params.yaml] [--profile default]
           [--model exp/teacher/final.pt] [--counts exp/targets/train_labeled/senone_counts]
           [--graph exp/graph] [--data data/fbank/test_clean] [--acwt A | --tune-on DECODE_DIR]
           [--utts N] [--out bench/results_decode.json]

Runs the project's own decoding path (``decode.decode_set``) in this process with one torch
thread and one search process (nj 1), so both parts use one core. Real-time factor =
processing seconds / audio seconds: forward (features + network or GMM scoring) and search
separately and together. The issue's target is RTF <= 0.1 for the default teacher. The acoustic
scale is the one chosen on dev (--tune-on, default exp/<model dir>/decode_dev) or --acwt.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

from millionhours.toolchain import khg   # noqa: F401  (import order)
from millionhours import config, datadir, decode as dec, graph as graphmod, scoring


def subset(src: str, n: int, tmp: str) -> str:
    """The first n utterances of a feature dir (feats.scp, utt2spk, text)."""
    utts = sorted(datadir.read_table(os.path.join(src, "utt2spk")), key=str.encode)[:n]
    for name in ("feats.scp", "utt2spk", "text"):
        path = os.path.join(src, name)
        if os.path.isfile(path):
            t = datadir.read_table(path, required=False)
            datadir.write_table(os.path.join(tmp, name), {u: t[u] for u in utts if u in t})
    return tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    config.add_common_args(ap)
    ap.add_argument("--model", default="exp/teacher/final.pt")
    ap.add_argument("--counts", default="exp/targets/train_labeled/senone_counts")
    ap.add_argument("--graph", default="exp/graph")
    ap.add_argument("--data", default="data/fbank/test_clean")
    ap.add_argument("--acwt", type=float, default=None)
    ap.add_argument("--tune-on", default=None)
    ap.add_argument("--utts", type=int, default=100, help="utterances timed (0 = all)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    params = config.load_params(args.params, args.profile)
    params["decode"]["threads"] = 1
    acwt = args.acwt
    if acwt is None:
        tune = args.tune_on or os.path.join(os.path.dirname(os.path.abspath(args.model))
                                            if os.path.isfile(args.model) else args.model,
                                            "decode_dev")
        acwt = json.load(open(os.path.join(tune, "info.json")))["acwt"]
    load_avg = os.getloadavg()
    t0 = time.time()
    graph = graphmod.load_graph(args.graph)
    load_s = time.time() - t0
    scorer, tm = dec.load_scorer(args.model, params, args.counts, device="cpu")
    dec.check_model_graph(scorer, tm, graph, args.model)
    cfg = dec.SearchConfig.from_params(params["decode"])
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(args.data, args.utts, tmp) if args.utts else args.data
        out = dec.decode_set(scorer, graph, data, [acwt], cfg, nj=1, progress=False)
        refs = datadir.read_table(os.path.join(data, "text"), required=False)
    audio = out.frames * params["features"].get("frame_shift_ms", 10.0) / 1000.0
    wer = scoring.score_set(refs, out.hyps[acwt])[0]["wer"] if refs else None
    res = {"model": args.model, "kind": scorer.kind, "graph": args.graph, "data": args.data,
           "utterances": len(out.utts), "audio_s": round(audio, 1), "acwt": acwt,
           "search": vars(cfg), "torch_threads": 1, "nj": 1,
           "rtf_forward": round(out.forward_s / audio, 5),
           "rtf_search": round(out.search_s / audio, 5),
           "rtf_total": round((out.forward_s + out.search_s) / audio, 5),
           "wer_on_subset": wer, "graph_load_s": round(load_s, 1),
           "load_avg_before": load_avg, "load_avg_after": os.getloadavg(),
           "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "code_version": config.code_version()}
    print(json.dumps(res, indent=2))
    ok = res["rtf_total"] <= 0.1
    print(f"bench_decode: {scorer.kind} RTF forward {res['rtf_forward']:.4f} + search "
          f"{res['rtf_search']:.4f} = {res['rtf_total']:.4f} on one core "
          f"({'meets' if ok else 'misses'} the 0.1 target)", file=sys.stderr)
    if args.out:
        from millionhours.fileio import write_json
        write_json(args.out, res)


if __name__ == "__main__":
    main()
