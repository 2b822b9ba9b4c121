"""Combine data dirs (or stage-3 target dirs) into one: Kaldi's utils/combine_data.sh, with a per
source utterance prefix (utils/copy_data_dir.sh --utt-prefix --spk-prefix) so two copies of the
same utterances (e.g. the noisy and the clean recording of the labeled set) can live side by side.

Usage: python -m millionhours.bin.combine_data OUT_DIR SRC_DIR[=PREFIX] SRC_DIR[=PREFIX] ...

e.g. python -m millionhours.bin.combine_data data/fbank/train_labeled_mc \\
         data/fbank/train_labeled data/fbank/train_labeled_clean=clean-

Utterance-keyed tables (feats.scp, utt2num_frames, text, targets.scp, ...) are merged with the
prefix on every key, speaker tables with the prefix on every speaker; the scp entries still point
at the sources' archives (nothing is copied). Statistics are summed (cmvn.mat: global CMVN stats,
senone_counts: the priors' counts); model files (num_senones, final.mdl, tree, phones.txt,
frame_shift) must be identical in every source and are copied. OUT_DIR is written under a
temporary name and appears, complete, at the end.
"""
import argparse
import filecmp
import os
import shutil
import sys

import kaldiio
import numpy as np

from millionhours import alignments
from millionhours.datadir import DataDirError, read_table, spk2utt_of, write_table
from millionhours.fileio import atomic_open, atomic_path

PROG = "combine_data"
UTT_TABLES = ("feats.scp", "utt2num_frames", "utt2dur", "text", "utt2corruption", "wav.scp",
              "targets.scp", "phone_targets.scp", "window_targets.scp")
SPK_TABLES = ("spk2gender", "spk2info")
SAME_FILES = ("num_senones", "final.mdl", "tree", "phones.txt", "frame_shift")


def parse_source(arg: str) -> tuple[str, str]:
    path, _, prefix = arg.partition("=")
    if not os.path.isdir(path):
        raise DataDirError(f"{path}: not a directory; give data or target dirs as DIR[=PREFIX]")
    return path, prefix


def present(sources, name: str) -> bool:
    """A file is combined only when every source has it (a partial union would mislead)."""
    have = [os.path.exists(os.path.join(d, name)) for d, _ in sources]
    if any(have) and not all(have):
        missing = [d for (d, _), h in zip(sources, have) if not h]
        print(f"{PROG}: warning: {name} skipped: missing in {', '.join(missing)}", file=sys.stderr)
    return all(have)


def merge_tables(sources, name: str, prefix_value: bool = False) -> dict:
    out = {}
    for d, prefix in sources:
        for key, value in read_table(os.path.join(d, name)).items():
            if prefix + key in out:
                raise DataDirError(f"{d}/{name}: key '{prefix + key}' occurs in two sources; "
                                   f"give one of them a prefix (DIR=PREFIX)")
            out[prefix + key] = prefix + value if prefix_value else value
    return out


def combine(out_dir: str, sources: list[tuple[str, str]]) -> None:
    with atomic_path(out_dir) as tmp:
        os.makedirs(tmp)
        for name in UTT_TABLES + SPK_TABLES:
            if present(sources, name):
                write_table(os.path.join(tmp, name), merge_tables(sources, name))
        if present(sources, "utt2spk"):
            utt2spk = merge_tables(sources, "utt2spk", prefix_value=True)
            write_table(os.path.join(tmp, "utt2spk"), utt2spk)
            write_table(os.path.join(tmp, "spk2utt"), spk2utt_of(utt2spk))
        for name in SAME_FILES:
            if present(sources, name):
                first = os.path.join(sources[0][0], name)
                for d, _ in sources[1:]:
                    if not filecmp.cmp(first, os.path.join(d, name), shallow=False):
                        raise DataDirError(f"{d}/{name}: differs from {first}; sources must share "
                                           f"one tree/model to be combined")
                shutil.copy(first, os.path.join(tmp, name))
        if present(sources, "cmvn.mat"):
            stats = sum(kaldiio.load_mat(os.path.join(d, "cmvn.mat")) for d, _ in sources)
            kaldiio.save_mat(os.path.join(tmp, "cmvn.mat"), np.asarray(stats, np.float64))
        if present(sources, "senone_counts"):
            counts = sum(alignments.read_counts(os.path.join(d, "senone_counts")) for d, _ in sources)
            with atomic_open(os.path.join(tmp, "senone_counts")) as f:
                alignments.write_counts(f, counts)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m millionhours.bin.{PROG}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("sources", nargs="+", metavar="SRC_DIR[=PREFIX]")
    args = ap.parse_args(argv)
    try:
        sources = [parse_source(s) for s in args.sources]
        if len({p for _, p in sources}) < len(sources):
            raise DataDirError("two sources share a prefix; give each copy its own (DIR=PREFIX)")
        combine(args.out_dir, sources)
    except (DataDirError, OSError, ValueError) as e:
        sys.exit(f"{PROG}: error: {e}")
    print(f"{PROG}: {args.out_dir} <- {', '.join(d + (f' ({p})' if p else '') for d, p in sources)}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
