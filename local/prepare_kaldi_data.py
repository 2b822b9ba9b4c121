"""Real data: validate a user's Kaldi data dir and compute features exactly as stage 1 does.

Usage: python -m local.prepare_kaldi_data [--params P] [--profile P] [--lexicon lexicon.txt]
                                          [--need-text] [--nj N] SRC_DATADIR OUT_DATADIR

Runs the checks of Kaldi's utils/validate_data_dir.sh (sorted unique ids, utt2spk/spk2utt/
wav.scp/segments/text consistent, speaker ids prefixing utterance ids, non-empty transcripts,
words in the lexicon when one is given) and then reads every utterance's audio (16 kHz files or
`command |` pipes) while computing 64-dim fbank into OUT_DATADIR, which later stages use the same
way as the synthesized sets (e.g. OUT_DATADIR = data/fbank/<name>).
"""
import argparse
import sys

from millionhours import config, datadir, features
from millionhours.bin.compute_features import compute_features


def read_lexicon_words(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        return {line.split(maxsplit=1)[0] for line in f if line.strip()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_common_args(ap)
    ap.add_argument("--lexicon", help="Kaldi lexicon.txt; every transcript word must be in it")
    ap.add_argument("--need-text", action="store_true", help="fail when the dir has no `text`")
    ap.add_argument("--nj", type=int, default=None)
    ap.add_argument("src")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    params = config.load_params(args.params, args.profile)
    try:
        lexicon = read_lexicon_words(args.lexicon) if args.lexicon else None
        datadir.validate(args.src, lexicon=lexicon, need_text=args.need_text)
        info = compute_features(args.src, args.out, features.FbankConfig.from_params(params["features"]),
                                config.num_jobs(args.nj or params["features"]["nj"]))
    except (datadir.DataDirError, OSError) as e:
        sys.exit(f"prepare_kaldi_data: {e}")
    print(f"prepare_kaldi_data: {args.src} -> {args.out}: {info['utts']} utterances, {info['frames']} frames")


if __name__ == "__main__":
    main()
