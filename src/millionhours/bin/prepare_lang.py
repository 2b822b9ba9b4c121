"""Lang dir from a lexicon: Kaldi's utils/prepare_lang.sh (see millionhours.lang).

Usage: python -m millionhours.bin.prepare_lang [--sil-prob 0.5] [--oov '<unk>'] LEXICON LANG_DIR

LEXICON has 'word phone1 phone2 ...' lines (several per word allowed); the silence phone 'sil'
is added, the OOV word gets the spoken-noise phone 'spn'. LANG_DIR gets phones.txt, words.txt,
topo, L.fst, L_disambig.fst, oov.{txt,int} and phones/ (sets, roots, extra_questions, ...).
"""
import argparse
import sys

from millionhours import lang


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--sil-prob", type=float, default=lang.SIL_PROB,
                    help="optional-silence probability between words (default 0.5, as Kaldi)")
    ap.add_argument("--oov", default=lang.OOV_WORD, help="OOV word (default <unk>)")
    ap.add_argument("--sil-phone", default=lang.SIL, help="silence phone (default sil)")
    ap.add_argument("lexicon", help="lexicon.txt: word phone1 phone2 ...")
    ap.add_argument("lang_dir", help="output lang dir, e.g. data/lang")
    args = ap.parse_args(argv)
    try:
        la = lang.prepare_lang(args.lexicon, args.lang_dir, args.sil_phone, args.oov, args.sil_prob)
    except lang.LangError as e:
        sys.exit(f"prepare_lang: {e}")
    print(f"prepare_lang: {args.lang_dir}: {len(la.words) - 4} words, {len(la.lexicon)} "
          f"pronunciations, {len(la.real_phone_ids)} phones, {len(la.disambig)} disambig symbols")


if __name__ == "__main__":
    main()
