#!/usr/bin/env bash
# demo.sh: the tour `make demo` runs: check every model, compile one for 8
# ranks (its fused kernels compiled by NVRTC and the C compiler), prove the
# plan cannot hang, look inside, draw it, predict its step, then train tiny
# GPT-2 on 8 local CPU ranks (tp 2 x pp 2 x dp 2) and draw its loss.
set -euo pipefail
cd "$(dirname "$0")/.."
weft=${WEFT:-build/weft}
out=${DEMO_OUT:-build/demo}
mkdir -p "$out"
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s$ %s%s\n' "$bold" "$*" "$plain"; "$@"; }

for m in models/*.xml; do
  step "$weft" check "$m"
done
layout=(--variant tiny --world-size 8 --tp 2 --pp 2 --micro-batch-size 2 --global-batch-size 16)
step "$weft" compile models/gpt2.xml "${layout[@]}" -o "$out/gpt2.plan"
step "$weft" verify "$out/gpt2.plan"
step "$weft" inspect "$out/gpt2.plan"
step "$weft" inspect "$out/gpt2.plan" --rank 5
step "$weft" inspect "$out/gpt2.plan" --kernels
step "$weft" dot models/gpt2.xml "${layout[@]}" -o "$out/gpt2.svg"
# GPT-2 124M for the prediction: the tiny variant's microseconds of compute say little
step "$weft" simulate models/gpt2.xml --world-size 16 --tp 2 --pp 4 --micro-batch-size 4 --global-batch-size 128 --bf16 \
  -o "$out/schedule.svg"
# Training the plan compiled above (tp 2 x pp 2 x dp 2) on 8 local CPU
# ranks; mpirun refuses root unless told.
mpi=(mpirun --oversubscribe -np 8)
[ "$(id -u)" != 0 ] || mpi+=(--allow-run-as-root)
step "$weft" compile models/gpt2.xml "${layout[@]}" --lr 3e-3 -o "$out/gpt2-train.plan"
step "${mpi[@]}" "$weft" run "$out/gpt2-train.plan" --steps 40 --log "$out/metrics.jsonl"
step "$weft" plot "$out/metrics.jsonl" -o "$out/loss.svg"
printf '\nThe pictures: %s/gpt2.svg (the partitioned model), %s/schedule.svg (the timeline),\n' "$out" "$out"
printf '%s/loss.svg (the loss and tokens/s); the training log: %s/metrics.jsonl (one JSON object per iteration).\n' "$out" "$out"
