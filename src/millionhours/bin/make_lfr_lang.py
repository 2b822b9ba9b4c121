"""The networks' lang dir: a copy of a lang dir with the one-state low-frame-rate topology.

Usage: python -m millionhours.bin.make_lfr_lang [--pdf-classes 1|2] SRC_LANG_DIR LANG_LFR_DIR

  e.g. python -m millionhours.bin.make_lfr_lang data/lang data/lang_lfr

Kaldi chain recipes do `cp -r data/lang data/lang_chain` and write its topo with
steps/nnet3/chain/gen_topo.py; this does the same (millionhours.lang.lfr_topo_text): every
phone of SRC_LANG_DIR/topo becomes one emitting state, so each network row (30 ms) is one graph
frame and a phone lasts one row at least; --pdf-classes 2 gives the state chain's forward and
self-loop pdf classes (params lfr_tree.pdf_classes), 1 one senone per context-dependent phone. Any Kaldi
lang dir works. LANG_LFR_DIR is built under a temporary name and appears complete.
"""
import argparse
import sys

from millionhours import lang


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m millionhours.bin.make_lfr_lang",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--pdf-classes", type=int, default=1, choices=(1, 2),
                    help="1: one pdf per state; 2: chain's forward/self-loop pdf classes")
    ap.add_argument("src", help="lang dir, e.g. data/lang")
    ap.add_argument("dst", help="output lang dir, e.g. data/lang_lfr")
    args = ap.parse_args(argv)
    try:
        lang.make_lfr_lang(args.src, args.dst, args.pdf_classes)
    except lang.LangError as e:
        sys.exit(f"make_lfr_lang: error: {e}")
    print(f"make_lfr_lang: {args.dst}: {args.src} with the one-state topology")


if __name__ == "__main__":
    main()
