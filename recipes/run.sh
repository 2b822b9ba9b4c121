#!/usr/bin/env bash
# Replication of Parthasarathi & Strom (ICASSP 2019), Kaldi-style recipe driver.
# Each stage calls one Python entry point; dvc.yaml runs the same stages through this script.
#
#   0  corpus      synthesize the multi-speaker corpus (local/make_corpus.py)
#   1  features    64-dim fbank + global CMVN stats for every set
#
# Usage: bash recipes/run.sh [options]
#   --stage N          first stage to run (default 0)
#   --stop-stage M     last stage to run (default: all)
#   --profile NAME     tiny | default | paper (default: params.yaml's `profile`)
#   --params FILE      parameter file (default params.yaml)
#   --data DIR         data root (default data)
#   --skip-setup       do not check/install the environment first
set -euo pipefail

stage=0
stop_stage=100
profile=
params=params.yaml
data=data
skip_setup=false

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-1}"; }
while (( $# )); do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --params) params=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
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
sets=(train_labeled train_unlabeled dev test_clean test_noisy)

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
