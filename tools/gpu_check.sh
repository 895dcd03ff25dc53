#!/usr/bin/env bash
# The whole GPU protocol of docs/BENCHMARKS.md in one run (under 8 minutes on an H100/H200-class GPU):
#
#   tools/gpu_check.sh [OUTPUT_DIR]        # default bench/gpu; PYTHON=... to pick the interpreter
#
#   1. train   fcn_resnet50 + aux, batch 8, 480x480: ours bf16 + channels-last vs torchvision's fp32 recipe
#   2. train   the same with --compile
#   3. eval    48 VOC-sized images, batch 8 vs torchvision's one at a time; fp32 confusion matrices must be equal
#   4. infer   batch-1 latency at 520x520
#   5. data    loader images/s with 1, 4 and 16 workers (torchvision's pipeline, ours with PIL, ours) vs the
#              GPU step rate measured in 1
#   6. predict predict.py on a folder of 200 VOC-sized JPEGs (-b 8, 8 workers) vs one at a time; masks compared
#   7. ddp     a 2-process torchrun training run on one GPU (Gloo shares the GPU), 1 epoch of the demo data
#
# Peak memory and MFU come with 1-4. Every step writes its JSON (or log) to OUTPUT_DIR; summary.md there holds
# the ratios against the goals. A failed step is reported and the others still run; the exit status is 1 if
# any step failed or missed a correctness check. DRY_RUN=1 prints the commands instead (tests parse them).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-bench/gpu}
mkdir -p "$OUT"
BENCH=("$PY" tools/benchmark.py --device cuda)
OURS=(--amp --amp-dtype bf16 --channels-last)
failed=()

step() {  # step NAME SECONDS COMMAND...: runs COMMAND under a time limit, its output to OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    if [ -n "${DRY_RUN:-}" ]; then
        printf 'RUN %s\n' "$*"
        return
    fi
    echo "== $name: $*"
    local start=$SECONDS
    if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
        echo "   done in $((SECONDS - start)) s"
    else
        echo "   FAILED (exit $?, after $((SECONDS - start)) s): see $OUT/$name.log"
        failed+=("$name")
    fi
}

if [ -z "${DRY_RUN:-}" ]; then
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0), \
torch.__version__, 'CUDA', torch.version.cuda)" | tee "$OUT/device.txt" || exit 1
fi

step train 120 "${BENCH[@]}" --mode train "${OURS[@]}" -b 8 --size 480 --json "$OUT/train.json"
step train_compile 240 "${BENCH[@]}" --mode train "${OURS[@]}" --compile -b 8 --size 480 \
    --json "$OUT/train_compile.json"
step eval 90 "${BENCH[@]}" --mode eval "${OURS[@]}" -b 8 --json "$OUT/eval.json"
step infer 60 "${BENCH[@]}" --mode infer "${OURS[@]}" --size 520 --iters 200 --json "$OUT/infer.json"
rate=$("$PY" -c "import json; print(json.load(open('$OUT/train.json'))['variants']['ours']['images_per_s'])" \
       2>/dev/null || echo 100)
step data 150 "$PY" tools/benchmark.py --mode data -b 8 --workers 1 4 16 --rounds 1 --gpu-step-rate "$rate" \
    --json "$OUT/data.json"
step predict 90 "${BENCH[@]}" --mode predict "${OURS[@]}" -b 8 --workers 8 --num-images 200 --json "$OUT/predict.json"

rm -rf "$OUT/demo" "$OUT/ddp"
step demo 60 "$PY" my_dataset.py demo --out "$OUT/demo" --num-train 32 --num-val 8 --size 96
step ddp 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 train_multi_GPU.py \
    --data-path "$OUT/demo" --output-dir "$OUT/ddp" --epochs 1 -b 4 --pretrained-backbone none --base-size 96 \
    --crop-size 96 -j 2 --device cuda --amp --print-freq 2
[ -n "${DRY_RUN:-}" ] && exit 0
[ -s "$OUT/ddp/metrics.jsonl" ] || failed+=("ddp: no metrics.jsonl")

"$PY" -m tools.benchlib.summary "$OUT" | tee "$OUT/summary.md" || failed+=("a check")
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
