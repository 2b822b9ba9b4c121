#!/usr/bin/env bash
# Replication of Parthasarathi & Strom (ICASSP 2019), Kaldi-style recipe driver.
# Each stage calls one Python entry point; dvc.yaml runs the same stages through this script.
#
#   0  corpus      synthesize the multi-speaker corpus (local/make_corpus.py)
#   1  features    64-dim fbank + global CMVN stats for every set
#   2  gmm         lang dir, mono -> triphone GMM-HMM, senone tree, alignments (a Kaldi exp dir)
#   3  targets     the networks' tree at 30 ms (Kaldi chain's build_tree.sh) from any Kaldi exp
#                  dir's alignments, then senone targets at the low frame rate + priors
#   4  teacher     BLSTM teacher on the labeled set
#   5  labels      the teacher's top-k posteriors of the unlabeled set (sharded store), and all
#                  of them in a second store when labels.dense (the k sweep's reference)
#   6  students    streaming LSTM students, one per params run_variants entry (scheduled
#                  learning; torchrun with `workers` processes when the variant sets them)
#   7  decode      LM + HCLG (built once, cached; with lfr_tree.use also the networks' 30 ms
#                  graph), then every model decoded on dev (acoustic scale swept) and on the
#                  test sets (params decode.test_sets) with dev's scale; WER JSON per set
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
# each finished stage appends "name start end" to EXP/timing.tsv (setup.sh too); stage 8 sums
# the latest line of each into results/timing.json (names as dvc.yaml's stages)
began=
now() { echo "${EPOCHREALTIME/,/.}"; }
begin() { began=$(now); }
finish() { mkdir -p "$exp"; printf '%s\t%s\t%s\n' "$1" "$began" "$(now)" >> "$exp/timing.tsv"; }

if ! $skip_setup; then
  TIMING_LOG=$exp/timing.tsv bash recipes/setup.sh
fi
# shellcheck disable=SC1091
[[ -n ${VIRTUAL_ENV:-} ]] || source "$root/.venv/bin/activate"    # an active venv is respected

popts=(--params "$params")
[[ -n $profile ]] && popts+=(--profile "$profile")
sets=(train_labeled train_unlabeled dev test_clean test_noisy test_unseen_voice train_labeled_clean)
param() { python -m millionhours.config "${popts[@]}" "$@"; }   # a value of the effective params
# the networks' tree and graph: the 30 ms LFR tree (lfr_tree.use) or the GMM's 10 ms one
nnet_tree=$exp/tri nnet_graph=$exp/graph
if (( stage <= 7 && stop_stage >= 3 )) && [[ $(param --get lfr_tree.use) == True ]]; then
  nnet_tree=$exp/tree_lfr nnet_graph=$exp/graph_lfr
fi

if (( stage <= 0 && stop_stage >= 0 )); then
  begin
  echo "stage 0: corpus -> $data/corpus" >&2
  python -m local.make_corpus "${popts[@]}" --out "$data/corpus"
  finish corpus
fi

if (( stage <= 1 && stop_stage >= 1 )); then
  begin
  echo "stage 1: features -> $data/fbank" >&2
  for set in "${sets[@]}"; do
    python -m millionhours.bin.compute_features "${popts[@]}" "$data/corpus/$set" "$data/fbank/$set"
  done
  python -m local.corpus_summary "${popts[@]}" "$data/corpus" "$data/fbank"
  finish features
fi

if (( stage <= 2 && stop_stage >= 2 )); then
  begin
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
  finish gmm
fi

if (( stage <= 3 && stop_stage >= 3 )); then
  begin
  echo "stage 3: $data/lang_lfr, $exp/tree_lfr{,_ali_dev,_ali_unlabeled_oracle}; targets -> $exp/targets" >&2
  # the networks' own tree at 30 ms (Kaldi chain's lang_chain + build_tree.sh
  # --frame-subsampling-factor 3); every set's 10 ms alignments converted to it
  python -m millionhours.bin.make_lfr_lang "$data/lang" "$data/lang_lfr"
  python -m millionhours.bin.build_tree_lfr "${popts[@]}" --results "$results/lfr_tree.json" \
    --convert "$exp/tri_ali_dev=$exp/tree_lfr_ali_dev" \
    --convert "$exp/tri_ali_unlabeled_oracle=$exp/tree_lfr_ali_unlabeled_oracle" \
    "$data/fbank/train_labeled_clean" "$data/lang_lfr" "$exp/tri" "$exp/tree_lfr"
  # targets of the networks' tree (lfr_tree.use; else the GMM's): any Kaldi exp dir works here
  ali_dev=${nnet_tree}_ali_dev ali_orc=${nnet_tree}_ali_unlabeled_oracle
  [[ $nnet_tree == "$exp/tri" ]] && ali_dev=$exp/tri_ali_dev ali_orc=$exp/tri_ali_unlabeled_oracle
  python -m millionhours.bin.import_alignments "${popts[@]}" --results "$results/import.json" \
    "$nnet_tree" "$data/fbank/train_labeled" "$exp/targets/train_labeled"
  python -m millionhours.bin.import_alignments "${popts[@]}" "$ali_dev" "$data/fbank/dev" "$exp/targets/dev"
  python -m millionhours.bin.import_alignments "${popts[@]}" "$ali_orc" \
    "$data/fbank/train_unlabeled" "$exp/targets/train_unlabeled_oracle"
  finish targets
fi

if (( stage <= 4 && stop_stage >= 4 )); then
  begin
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
    --counts "$exp/targets/train_labeled/senone_counts" --tree-dir "$nnet_tree" \
    "$exp/teacher/final.pt" "$exp/tri" "$data/fbank/dev" "$exp/targets/dev"
  finish teacher
fi

if (( stage <= 5 && stop_stage >= 5 )); then
  begin
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
  finish labels
fi

if (( stage <= 6 && stop_stage >= 6 )); then
  # student variants and their worker counts, from the params (the one place they are declared)
  [[ -n $variants ]] || variants=$(param --run-variants)
  for v in $variants; do
    echo "stage 6: student $v -> $exp/student_$v" >&2
    begin
    workers=$(param --get "student_variants.$v.distributed.workers" --default "student.distributed.workers")
    transport=$(param --get "student_variants.$v.distributed.transport" --default "student.distributed.transport")
    launch=(python)     # simulated workers run inside the one process
    (( workers > 1 )) && [[ $transport != simulated ]] && launch=(torchrun --standalone --nproc-per-node "$workers")
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
    finish "student@$v"
  done
fi

if (( stage <= 7 && stop_stage >= 7 )); then
  echo "stage 7: graphs -> $exp/graph (10 ms), $exp/graph_lfr (30 ms, lfr_tree.use); decode -> $exp/decode/<model>/<set>" >&2
  read -r -a test_sets <<< "$(param --get decode.test_sets | tr -d "[],'")"
  # the graphs are built with the full stage or alone (--models ""); --models LIST reuses them
  if [[ $models == all || -z $models ]]; then
    begin
    evals=(--eval-text dev="$data/corpus/dev/text")
    for set in "${test_sets[@]}"; do evals+=(--eval-text "$set=$data/corpus/$set/text"); done
    python -m millionhours.bin.make_graph "${popts[@]}" --results "$results/lm.json" "${evals[@]}" \
      "$data/lang" "$exp/tri" "$data/corpus/local/lm_text.txt" "$exp/graph"
    # the networks' 30 ms graph when they use the LFR tree (an empty dir otherwise, so the
    # stage's outputs are the same either way)
    mkdir -p "$exp/graph_lfr"
    if [[ $nnet_graph == "$exp/graph_lfr" ]]; then
      python -m millionhours.bin.make_graph "${popts[@]}" \
        "$data/lang_lfr" "$exp/tree_lfr" "$data/corpus/local/lm_text.txt" "$exp/graph_lfr"
    fi
    finish graph
  fi
  if [[ $models == all ]]; then
    models="gmm teacher $(for v in ${variants:-$(param --run-variants)}; do echo -n "student_$v "; done)"
  fi
  for m in $models; do
    case $m in
      gmm) model=$exp/tri graph=$exp/graph ;;
      *) model=$exp/$m/final.pt graph=$nnet_graph ;;
    esac
    dec=$exp/decode/$m
    begin
    # dev (acoustic scale swept), then every test set at dev's scale: one call, one graph load
    also=()
    for set in "${test_sets[@]}"; do also+=(--also "$data/fbank/$set=$dec/$set"); done
    python -m millionhours.bin.decode "${popts[@]}" --name "$m" --results-dir "$results" \
      --counts "$exp/targets/train_labeled/senone_counts" "${also[@]}" \
      "$model" "$graph" "$data/fbank/dev" "$dec/dev"
    finish "$([[ $m == student_* ]] && echo "decode_student@${m#student_}" || echo "decode@$m")"
  done
fi

if (( stage <= 8 && stop_stage >= 8 )); then
  echo "stage 8: tables -> $results/tables.md, $results/timing.json, $results/scale_model.*" >&2
  begin
  python -m millionhours.runlog "$exp/timing.tsv" "$results/timing.json"
  # the paper's scale, projected from the bytes per step measured here (a cost model, not a run)
  python -m millionhours.bin.scale_model "${popts[@]}" --from-results "$results" --out-dir "$results"
  python -m millionhours.bin.tables --results "$results"
  finish tables
  python -m millionhours.runlog "$exp/timing.tsv" "$results/timing.json"   # stage 8 included
fi
