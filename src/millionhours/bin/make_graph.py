"""Train the n-gram LM and build the decoding graph HCLG: Kaldi's utils/mkgraph.sh (+ the LM).

Usage: python -m millionhours.bin.make_graph [--params P] [--profile X] [--force]
           [--eval-text SET=TEXT ...] [--results R] LANG_DIR MODEL_DIR LM_TEXT GRAPH_DIR

  e.g. python -m millionhours.bin.make_graph --results results/lm.json \\
           --eval-text dev=data/corpus/dev/text --eval-text test_clean=data/corpus/test_clean/text \\
           data/lang exp/tri data/corpus/local/lm_text.txt exp/graph

LANG_DIR is a prepare_lang dir (L_disambig.fst, words.txt, phones/disambig.int). MODEL_DIR holds
the tree and final.mdl (the GMM exp dir; the nnets share its tree). LM_TEXT has one sentence per
line and must not contain dev/test sentences. The LM (order, count cutoffs, entropy pruning:
params ``lm``) is trained here, so GRAPH_DIR gets lm.arpa, G.fst, HCLG.fst, words.txt,
trans.mdl, vocab.txt, info.json (sizes, build time) and stamp.json, written last. If stamp.json
already matches the inputs' hashes and params, nothing is rebuilt (--force rebuilds).

--eval-text SET=TEXT (a Kaldi text file: utt word ...) adds the LM's perplexity and OOV rate on
that set to --results (the LM is never trained on these).
"""
import os
import sys
import time

from millionhours.toolchain import khg   # noqa: F401  (first: the native packages' import order)
from millionhours import config, graph as graphmod, kaldi_io, lang as langmod, lm as lmmod
from millionhours.fileio import atomic_open, write_json

PROG = "make_graph"


def lm_params(params: dict) -> dict:
    p = params.get("lm") or {}
    return {"order": int(p.get("order", 3)), "cutoffs": list(p.get("cutoffs") or []),
            "prune": float(p.get("prune", 0.0))}


def graph_params(params: dict) -> dict:
    p = (params.get("decode") or {}).get("graph") or {}
    return {"transition_scale": float(p.get("transition_scale", 1.0)),
            "self_loop_scale": float(p.get("self_loop_scale", 0.1))}


def parse_eval(items: list[str]) -> dict:
    try:
        pairs = config.split_pairs(items, "--eval-text", "SET=TEXT", "dev=data/corpus/dev/text")
    except ValueError as e:
        raise lmmod.LMError(str(e)) from None
    for _, path in pairs:
        if not os.path.isfile(path):
            raise lmmod.LMError(f"{path}: --eval-text file not found; pass a Kaldi text file")
    return dict(pairs)


def write_vocab(graph_dir: str, lm) -> list[str]:
    """vocab.txt: the words the graph can output (the LM's unigrams minus <s>, </s>)."""
    vocab = sorted(w for w in lm.vocabulary(sort=False) if w not in ("<s>", "</s>"))
    with atomic_open(os.path.join(graph_dir, "vocab.txt")) as f:
        f.writelines(f"{w}\n" for w in vocab)
    return vocab


def evaluate(lm, lang, evals: dict) -> dict:
    """Perplexity and OOV rates of each eval text (vs the LM and vs the lexicon)."""
    out = {}
    for name, path in evals.items():
        sents = lmmod.read_sentences(path, kaldi_text=True)
        r = lmmod.perplexity(lm, sents)
        toks = [w for s in sents for w in s.split()]
        r["oov_lexicon"] = sum(w not in lang.words for w in toks)
        r["oov_rate_lexicon"] = round(r["oov_lexicon"] / len(toks), 6) if toks else 0.0
        out[name] = r
    return out


def main(argv=None) -> None:
    ap = config.entry_parser(PROG, __doc__)
    ap.add_argument("--force", action="store_true", help="rebuild even if stamp.json matches")
    ap.add_argument("--eval-text", action="append", default=[], metavar="SET=TEXT",
                    help="held-out Kaldi text for perplexity/OOV (repeatable)")
    ap.add_argument("--results", default=None, help="LM results JSON (e.g. results/lm.json)")
    ap.add_argument("lang", help="lang dir, e.g. data/lang")
    ap.add_argument("model", help="exp dir with tree + final.mdl, e.g. exp/tri")
    ap.add_argument("lm_text", help="LM training text, e.g. data/corpus/local/lm_text.txt")
    ap.add_argument("graph", help="output graph dir, e.g. exp/graph")
    args = ap.parse_args(argv)
    params = config.load_params(args.params, args.profile)
    lp, gp = lm_params(params), graph_params(params)
    t0 = time.time()
    try:
        evals = parse_eval(args.eval_text)
        info = graphmod.build_graph_dir(args.lang, args.model, args.lm_text, args.graph, lp, gp,
                                        force=args.force,
                                        log=lambda m: print(f"{PROG}: {m}", file=sys.stderr))
        lm = lmmod.load_arpa(os.path.join(args.graph, "lm.arpa"))
        vocab = write_vocab(args.graph, lm)
        lang = langmod.load_lang(args.lang)
        ev = evaluate(lm, lang, evals)
    except (graphmod.GraphError, lmmod.LMError, langmod.LangError,
            kaldi_io.KaldiFormatError) as e:
        sys.exit(f"{PROG}: error: {e}")
    res = {"graph_dir": args.graph, "lm_text": args.lm_text, "lm": lp, "graph": gp,
           "ngrams": info["lm_ngrams"], "vocab": len(vocab), "lexicon_words": len(lang.lexicon),
           "lm_text_tokens_mapped_to_oov": info["lm_oov_mapped"], "eval": ev,
           "hclg": info["HCLG"], "hclg_bytes": info["HCLG_bytes"], "build_s": info["build_s"],
           "lm_s": info["lm_s"], "steps_s": info["steps_s"], "cached": info["cached"],
           "profile": params.get("profile"), "code_version": config.code_version()}
    if args.results:
        write_json(args.results, res)
    h = info["HCLG"]
    ppl = ", ".join(f"{k} ppl {v['ppl']:.0f} oov {100 * v['oov_rate']:.1f}%" for k, v in ev.items())
    print(f"{PROG}: {args.graph}: HCLG {h['states']} states, {h['arcs']} arcs "
          f"({info['HCLG_bytes'] / 2**20:.0f} MiB), built in {info['build_s']:.0f} s"
          f"{' (cached)' if info['cached'] else ''}; LM {info['lm_ngrams']}"
          f"{'; ' + ppl if ppl else ''}; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
