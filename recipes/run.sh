#!/usr/bin/env bash
# Replication of Parthasarathi & Strom (ICASSP 2019), Kaldi-style recipe driver.
# Each stage calls one Python entry point; dvc.yaml runs the same stages through this script.
#
#   0  corpus      synthesize the multi-speaker corpus (local/make_corpus.py)
#   1  features    64-dim fbank + global CMVN stats for every set
#   2  gmm         lang dir, mono -> triphone GMM-HMM, senone tree, alignments (a Kaldi exp dir)
#   3  targets     any Kaldi exp dir -> senone targets at the low frame rate + priors
#   4  teacher     BLSTM teacher on the labeled set
#   5  labels      the teacher's top-k posteriors of the unlabeled set (sharded store)
#
# Usage: bash recipes/run.sh [options]
#   --stage N          first stage to run (default 0)
#   --stop-stage M     last stage to run (default: all)
#   --profile NAME     tiny | default | paper (default: params.yaml's `profile`)
#   --params FILE      parameter file (default params.yaml)
#   --data DIR         data root (default data)
#   --exp DIR          experiment root (default exp)
#   --results DIR      where result JSON/TSV/PNG files go (default results)
#   --skip-setup       do not check/install the environment first
set -euo pipefail

stage=0
stop_stage=100
profile=
params=params.yaml
data=data
exp=exp
results=results
skip_setup=false

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-1}"; }
while (( $# )); do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --params) params=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --results) results=$2; shift 2 ;;
    --skip-setup) skip_setup=true; shift ;;
    -h|--help) usage 0 ;;
    *) echo "run.sh: unknown option '$1'" >&2; usage ;;
  esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mkdir -p log
echo "# $(date -u +%FT%TZ) $0 $*" | tee -a log/run.sh.log >&2

if ! $skip_setup; then
  bash recipes/setup.sh
fi
# shellcheck disable=SC1091
[[ -n ${VIRTUAL_ENV:-} ]] || source "$root/.venv/bin/activate"    # an active venv is respected

popts=(--params "$params")
[[ -n $profile ]] && popts+=(--profile "$profile")
sets=(train_labeled train_unlabeled dev test_clean test_noisy train_labeled_clean)

if (( stage <= 0 && stop_stage >= 0 )); then
  echo "stage 0: corpus -> $data/corpus" >&2
  python -m local.make_corpus "${popts[@]}" --out "$data/corpus"
fi

if (( stage <= 1 && stop_stage >= 1 )); then
  echo "stage 1: features -> $data/fbank" >&2
  for set in "${sets[@]}"; do
    python -m millionhours.bin.compute_features "${popts[@]}" "$data/corpus/$set" "$data/fbank/$set"
  done
  python -m local.corpus_summary "${popts[@]}" "$data/corpus" "$data/fbank"
fi

if (( stage <= 2 && stop_stage >= 2 )); then
  echo "stage 2: gmm -> $data/local/dict, $data/lang, $exp/tri, $exp/tri_ali_{dev,unlabeled_oracle}" >&2
  mkdir -p "$data/local/dict"
  python -m local.prepare_dict "${popts[@]}" "$data/corpus/local/lexicon.txt" "$data/local/dict/lexicon.txt"
  python -m millionhours.bin.prepare_lang "$data/local/dict/lexicon.txt" "$data/lang"
  # Trained and aligned on the clean copies of train_labeled (same utterances, as Kaldi's
  # reverberation recipes); the alignments serve the corrupted audio of train_labeled.
  python -m millionhours.bin.train_gmm "${popts[@]}" --results "$results/alignment.json" \
    "$data/fbank/train_labeled_clean" "$data/lang" "$exp/tri"
  python -m millionhours.bin.align_gmm "${popts[@]}" "$data/fbank/dev" "$data/lang" "$exp/tri" "$exp/tri_ali_dev"
  # oracle: the unlabeled set's true transcripts, for analysis only (never trained on)
  python -m millionhours.bin.align_gmm "${popts[@]}" --text "$data/corpus/oracle/train_unlabeled/text" \
    "$data/fbank/train_unlabeled" "$data/lang" "$exp/tri" "$exp/tri_ali_unlabeled_oracle"
fi

if (( stage <= 3 && stop_stage >= 3 )); then
  echo "stage 3: targets -> $exp/targets" >&2
  python -m millionhours.bin.import_alignments "${popts[@]}" --results "$results/import.json" \
    "$exp/tri" "$data/fbank/train_labeled" "$exp/targets/train_labeled"
  python -m millionhours.bin.import_alignments "${popts[@]}" "$exp/tri_ali_dev" "$data/fbank/dev" "$exp/targets/dev"
  python -m millionhours.bin.import_alignments "${popts[@]}" "$exp/tri_ali_unlabeled_oracle" \
    "$data/fbank/train_unlabeled" "$exp/targets/train_unlabeled_oracle"
fi

if (( stage <= 4 && stop_stage >= 4 )); then
  echo "stage 4: teacher -> $exp/teacher" >&2
  python -m millionhours.bin.train_am "${popts[@]}" --role teacher --results-dir "$results" \
    "$data/fbank/train_labeled" "$exp/targets/train_labeled" "$data/fbank/dev" "$exp/targets/dev" "$exp/teacher"
fi

if (( stage <= 5 && stop_stage >= 5 )); then
  echo "stage 5: labels -> $exp/labels" >&2
  python -m millionhours.bin.label "${popts[@]}" --results "$results/labels.json" --oracle-targets "$exp/targets/train_unlabeled_oracle" \
    "$exp/teacher/final.pt" "$data/fbank/train_unlabeled" "$exp/labels"
fi
