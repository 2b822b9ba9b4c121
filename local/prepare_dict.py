"""Stage 2 (embedded corpus): the pronunciation lexicon for lang preparation (Kaldi's local/prepare_dict.sh).

Usage: python -m local.prepare_dict [--params P] [--profile X] WORDS_LEXICON OUT_LEXICON

Takes the words of WORDS_LEXICON (stage 0's data/corpus/local/lexicon.txt) and writes their CMU
dictionary pronunciations to OUT_LEXICON; with `lexicon.reduced_vowel_variants` each
pronunciation also gets a variant with its unstressed vowels reduced to schwa, which is how
festival's diphone voices say them (a pronunciation the lexicon lacks is the main source of
gross alignment errors on the synthesized corpus).
"""
import sys

from local.corpus import text
from millionhours import config


def main(argv=None) -> None:
    ap = config.entry_parser("prepare_dict", __doc__)
    ap.prog = "python -m local.prepare_dict"
    ap.add_argument("words_lexicon")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    params = config.load_params(args.params, args.profile)
    reduced = bool(params.get("lexicon", {}).get("reduced_vowel_variants", False))
    try:
        with open(args.words_lexicon, encoding="utf-8") as f:
            words = {line.split(maxsplit=1)[0] for line in f if line.strip()}
        text.write_lexicon(words, text.load_cmudict(reduced_variants=reduced), args.out)
    except (OSError, ValueError) as e:
        sys.exit(f"prepare_dict: {e}")
    n = sum(1 for _ in open(args.out, encoding="utf-8"))
    print(f"prepare_dict: {args.out}: {len(words)} words, {n} pronunciations"
          f"{' (with reduced-vowel variants)' if reduced else ''}")


if __name__ == "__main__":
    main()
