#!/usr/bin/env bash
# Train the folds of a cross-validation one after another, resumable: a fold with a finished
# result (result.json) is skipped, a fold with a checkpoint is resumed, the others start.
#   bash benchmarks/tumour_cv_train.sh RUNS_DIR [CONFIG] [FOLDS...] [-- --set KEY=VALUE ...]
# e.g. bash benchmarks/tumour_cv_train.sh runs/tumour-cv workflows/brain_tumour.yaml 0 1 2 3 4
set -uo pipefail
runs=${1:?runs folder}; shift
config=${1:-workflows/brain_tumour.yaml}; shift || true
folds=(); extra=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
    folds+=("$1"); shift
done
[ ${#folds[@]} -gt 0 ] || folds=(0 1 2 3 4)
BIN=${MEDSEG_BIN:-.venv/bin}
mkdir -p "$runs"
for k in "${folds[@]}"; do
    out="$runs/fold-$k"
    if [ -f "$out/result.json" ]; then echo "fold $k: done ($out/result.json)"; continue; fi
    resume=(); [ -e "$out/last.safetensors" ] && resume=(--resume)
    echo "fold $k: training into $out ${resume[*]} $(date -u +%FT%TZ)"
    "$BIN/medseg-train" -c "$config" --set "data.folds=${FOLDS:-5}" --set "data.fold=$k" -o "$out" "${resume[@]}" -q \
        "${extra[@]}" > "$out.stdout" 2>> "$runs/fold-$k.log" || { echo "fold $k: failed (see $out.stdout)"; continue; }
    mv "$out.stdout" "$out/result.json"
    echo "fold $k: finished $(date -u +%FT%TZ)"
done
