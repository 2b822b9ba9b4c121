#!/usr/bin/env bash
# Replication of Parthasarathi & Strom (ICASSP 2019), Kaldi-style recipe driver.
# Each stage calls one Python entry point; dvc.yaml runs the same stages through this script.
#
#   0  corpus      synthesize the multi-speaker corpus (local/make_corpus.py)
#   1  features    64-dim fbank + global CMVN stats for every set
#   2  gmm         lang dir, mono -> triphone GMM-HMM, senone tree, alignments (a Kaldi exp dir)
#   3  targets     any Kaldi exp dir -> senone targets at the low frame rate + priors
#   4  teacher     BLSTM teacher on the labeled set
#   5  labels      the teacher's top-k posteriors of the unlabeled set (sharded store), and all
#                  of them in a second store when labels.dense (the k sweep's reference)
#   6  students    streaming LSTM students, one per params run_variants entry (scheduled
#                  learning; torchrun with `workers` processes when the variant sets them)
#   7  decode      LM + HCLG (built once, cached), then every model decoded on dev (acoustic
#                  scale swept) and on test_clean/test_noisy with dev's scale; WER JSON per set
#   8  tables      the paper's tables from the result JSON files: results/tables.md
#
# Usage: bash recipes/run.sh [options]
#   --stage N          first stage to run (default 0)
#   --stop-stage M     last stage to run (default: all)
#   --profile NAME     tiny | default | paper (default: params.yaml's `profile`)
#   --params FILE      parameter file (default params.yaml)
#   --data DIR         data root (default data)
#   --exp DIR          experiment root (default exp)
#   --results DIR      where result JSON/TSV/PNG files go (default results)
#   --variants "A B"   stage 6 only these student variants (default: params run_variants)
#   --models "A B"     stage 7 decodes only these models: gmm, teacher, student_<variant>
#                      (default: the graph, then gmm, teacher and every student variant, or
#                      those of --variants; "" = the graph only; a list decodes with the
#                      graph already built)
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
variants=
models=all

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
    --variants) variants=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
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
sets=(train_labeled train_unlabeled dev test_clean test_noisy test_unseen_voice train_labeled_clean)
param() { python -m millionhours.config "${popts[@]}" "$@"; }   # a value of the effective params

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
  # oracle: the unlabeled set's true transcripts, for analysis and the oracle student only
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
  feats=$data/fbank/train_labeled targets=$exp/targets/train_labeled
  if [[ $(param --get teacher.data.clean_copies) == True ]]; then
    # multi-condition: the labeled set plus its clean recordings (the GMM's audio), same targets
    feats=$exp/teacher/train_mc/feats targets=$exp/teacher/train_mc/targets
    python -m millionhours.bin.combine_data "$feats" "$data/fbank/train_labeled" "$data/fbank/train_labeled_clean=clean-"
    python -m millionhours.bin.combine_data "$targets" "$exp/targets/train_labeled" "$exp/targets/train_labeled=clean-"
  fi
  python -m millionhours.bin.train_am "${popts[@]}" --role teacher --results-dir "$results" \
    "$feats" "$targets" "$data/fbank/dev" "$exp/targets/dev" "$exp/teacher"
  # what its dev frame accuracy means: majority-senone, monophone-GMM and triphone-GMM frame
  # classifiers on the same frames
  python -m millionhours.bin.frame_baselines "${popts[@]}" --results "$results/frame_baselines.json" \
    --counts "$exp/targets/train_labeled/senone_counts" \
    "$exp/teacher/final.pt" "$exp/tri" "$data/fbank/dev" "$exp/targets/dev"
fi

if (( stage <= 5 && stop_stage >= 5 )); then
  echo "stage 5: labels -> $exp/labels" >&2
  python -m millionhours.bin.label "${popts[@]}" --results "$results/labels.json" --oracle-targets "$exp/targets/train_unlabeled_oracle" \
    "$exp/teacher/final.pt" "$data/fbank/train_unlabeled" "$exp/labels"
  # every posterior, for T4's full-target reference (the `dense` student variant); an empty dir
  # when off, so the stage's outputs are the same either way
  mkdir -p "$exp/labels_dense"
  if [[ $(param --get labels.dense) == True ]]; then
    python -m millionhours.bin.label "${popts[@]}" --dense --results "$results/labels_dense.json" \
      "$exp/teacher/final.pt" "$data/fbank/train_unlabeled" "$exp/labels_dense"
  fi
fi

if (( stage <= 6 && stop_stage >= 6 )); then
  # student variants and their worker counts, from the params (the one place they are declared)
  [[ -n $variants ]] || variants=$(param --run-variants)
  for v in $variants; do
    echo "stage 6: student $v -> $exp/student_$v" >&2
    workers=$(param --get "student_variants.$v.distributed.workers" --default "student.distributed.workers")
    launch=(python)
    (( workers > 1 )) && launch=(torchrun --standalone --nproc-per-node "$workers")
    labels=$exp/labels
    if [[ $(param --get "student_variants.$v.store" --default student.store) == dense ]]; then
      if [[ $(param --get labels.dense) != True ]]; then
        echo "run.sh: variant $v trains on every posterior; set labels.dense: true and rerun stage 5" >&2
        exit 1
      fi
      labels=$exp/labels_dense
    fi
    OMP_NUM_THREADS=1 "${launch[@]}" -m millionhours.bin.train_student "${popts[@]}" --variant "$v" \
      --results-dir "$results" --oracle-targets "$exp/targets/train_unlabeled_oracle" \
      "$data/fbank/train_labeled" "$exp/targets/train_labeled" "$data/fbank/train_unlabeled" \
      "$labels" "$data/fbank/dev" "$exp/targets/dev" "$exp/student_$v"
  done
fi

if (( stage <= 7 && stop_stage >= 7 )); then
  echo "stage 7: graph -> $exp/graph; decode -> $exp/decode/<model>/<set>" >&2
  # the graph is built with the full stage or alone (--models ""); --models LIST reuses it
  [[ $models == all || -z $models ]] && python -m millionhours.bin.make_graph "${popts[@]}" --results "$results/lm.json" \
    --eval-text dev="$data/corpus/dev/text" --eval-text test_clean="$data/corpus/test_clean/text" \
    --eval-text test_noisy="$data/corpus/test_noisy/text" \
    "$data/lang" "$exp/tri" "$data/corpus/local/lm_text.txt" "$exp/graph"
  if [[ $models == all ]]; then
    models="gmm teacher $(for v in ${variants:-$(param --run-variants)}; do echo -n "student_$v "; done)"
  fi
  for m in $models; do
    case $m in
      gmm) model=$exp/tri ;;
      *) model=$exp/$m/final.pt ;;
    esac
    dec=$exp/decode/$m
    python -m millionhours.bin.decode "${popts[@]}" --name "$m" --results-dir "$results" \
      --counts "$exp/targets/train_labeled/senone_counts" "$model" "$exp/graph" "$data/fbank/dev" "$dec/dev"
    for set in test_clean test_noisy; do
      python -m millionhours.bin.decode "${popts[@]}" --name "$m" --results-dir "$results" \
        --counts "$exp/targets/train_labeled/senone_counts" --tune-on "$dec/dev" \
        "$model" "$exp/graph" "$data/fbank/$set" "$dec/$set"
    done
  done
fi

if (( stage <= 8 && stop_stage >= 8 )); then
  echo "stage 8: tables -> $results/tables.md" >&2
  python -m millionhours.bin.tables --results "$results"
fi
