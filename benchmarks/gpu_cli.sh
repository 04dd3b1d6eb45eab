#!/usr/bin/env bash
# The CUDA path of the command line, timed: the smoke profile in one process and under torchrun,
# two tutorial-profile stage-2 epochs, and a slice of the paper profile (VGG16 at 256-384 px).
# Needs a CUDA GPU and the project installed (make setup); run from the repository root.
# Not part of make bench or CI. Runs go to a temporary cache; summaries to $OUT (default /tmp/gpu_cli).
set -u
OUT=${OUT:-/tmp/gpu_cli}
export PYTHONHASHSEED=0 FIREARM_CACHE=${FIREARM_CACHE:-$(mktemp -d)} PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
step() {
    echo; echo "=== $1"; shift
    local began=$(date +%s%N)
    "$@" 2>&1 | grep -v Warning | tail -n 6
    echo "wall $(( ($(date +%s%N) - began) / 1000000 )) ms"
}
SLICE=(--profile paper --set weights=None --set "images_per_category=20,30" --set pairs_per_category=40
       --set num_workers=12 --loss double --init random --epochs 1 --device cuda --no-progress)
step "smoke, one process" $PY -m helpers train-retrieval --profile smoke --loss double --init classifier --device cuda --no-progress --out "$OUT/smoke_1proc"
step "smoke, torchrun with 1 process (seed 1)" torchrun --standalone --nproc_per_node=1 -m helpers train-retrieval --profile smoke --loss double --init classifier --device cuda --seed 1 --no-progress --out "$OUT/smoke_torchrun"
step "tutorial, stage 2 from ImageNet, 2 epochs" $PY -m helpers train-retrieval --profile tutorial --loss double --init imagenet --epochs 2 --set ret_patience=None --device cuda --no-progress --out "$OUT/tutorial"
step "paper slice, one process" $PY -m helpers train-retrieval "${SLICE[@]}" --out "$OUT/paper_slice"
step "paper slice, torchrun with 1 process (seed 1)" torchrun --standalone --nproc_per_node=1 -m helpers train-retrieval "${SLICE[@]}" --seed 1 --out "$OUT/paper_torchrun"
