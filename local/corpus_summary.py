"""Prints the corpus + features summary: hours, utterances, speakers, voices, frames, test OOV.

Usage: python -m local.corpus_summary [--params P] [--profile P] CORPUS_DIR FBANK_DIR
"""
import argparse
import os

from millionhours import config, datadir
from millionhours.fileio import read_json

SETS = ("train_labeled", "train_unlabeled", "dev", "test_clean", "test_noisy", "test_unseen_voice",
        "train_labeled_clean")


def summary_lines(corpus: str, fbank: str) -> list[str]:
    summary = read_json(os.path.join(corpus, "summary.json"))
    lines = [f"{'set':16s} {'hours':>7s} {'utts':>6s} {'spk':>4s} {'f':>3s} {'voices':>6s} "
             f"{'corrupt':>7s} {'frames':>9s} {'OOV':>6s}"]
    for s in SETS:
        v = summary[s]
        frames_path = os.path.join(fbank, s, "utt2num_frames")
        frames = sum(int(n) for n in datadir.read_table(frames_path).values()) if os.path.isfile(frames_path) else 0
        oov = v.get("oov_rate_vs_lm_text")
        lines.append(f"{s:16s} {v['hours']:7.3f} {v['utterances']:6d} {v['speakers']:4d} {v['female_speakers']:3d} "
                     f"{len(v['voices']):6d} {v['corrupted_share']:7.2f} {frames:9d} "
                     f"{'' if oov is None else f'{100 * oov:5.2f}%':>6s}")
    t = summary["text"]
    lines.append(f"text: {t['sentence_pool']} sentences in the pool, LM text {t['lm_sentences']} sentences "
                 f"({t['lm_vocab']} word types), lexicon {t['lexicon_words']} words")
    lines.append("voices: " + ", ".join(summary["train_labeled"]["voices"]) + "; unseen voice: "
                 + ", ".join(summary["test_unseen_voice"]["voices"]))
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    config.add_common_args(ap)
    ap.add_argument("corpus")
    ap.add_argument("fbank")
    args = ap.parse_args(argv)
    print("\n".join(summary_lines(args.corpus, args.fbank)))


if __name__ == "__main__":
    main()
