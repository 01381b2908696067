#!/usr/bin/env bash
# demo.sh: the tour `make demo` runs: check every model, compile one for 8
# ranks (its fused kernels compiled by NVRTC and the C compiler), prove the
# plan cannot hang, look inside, draw it, predict its step, then train tiny
# GPT-2 on 8 local CPU ranks on real text (tp 2 x pp 2 x dp 2), save it,
# resume it on 4 ranks laid out otherwise, and draw its loss.
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
# Training for real, on 8 local CPU ranks: text every Debian machine has
# (the licenses in /usr/share/common-licenses, the same everywhere, so the
# run is too), one JSON line a paragraph, made into Megatron's indexed
# dataset by weft data (byte-level: 256 byte ids and the end of a document,
# so a model that knew nothing would score ln 257 = 5.55).  Tiny GPT-2 trains on it at
# tp 2 x pp 2 x dp 2, validating and saving every 100 iterations for 500; then 4
# ranks laid out otherwise (pp 2 x dp 2) load that checkpoint and train 500 more.
# mpirun refuses root unless told.
mpi=(mpirun --oversubscribe)
[ "$(id -u)" != 0 ] || mpi+=(--allow-run-as-root)
licenses=/usr/share/common-licenses
printf '\n%s$ awk (a JSON line a paragraph) %s/{GPL-3,GPL-2,LGPL-2.1,Apache-2.0,MPL-2.0,Artistic} > %s%s\n' \
  "$bold" "$licenses" "$out/corpus.jsonl" "$plain"
for f in "$licenses"/GPL-3 "$licenses"/GPL-2 "$licenses"/LGPL-2.1 "$licenses"/Apache-2.0 "$licenses"/MPL-2.0 "$licenses"/Artistic; do
  [ -f "$f" ] && cat "$f" && printf '\n\n'
done | awk 'BEGIN { RS = "" } {
  gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\t/, "\\t"); gsub(/\r/, "\\r"); gsub(/\f/, "\\f"); gsub(/\n/, "\\n")
  print "{\"text\": \"" $0 "\"}" }' > "$out/corpus.jsonl"
step "$weft" data --input "$out/corpus.jsonl" --output-prefix "$out/corpus" --append-eod
train=(--variant tiny --vocab-size 257 --micro-batch-size 2 --global-batch-size 16 --hidden-dropout 0 --arch cpu
       --lr 3e-3 --min-lr 3e-4 --lr-warmup-iters 20 --lr-decay-iters 1000 --lr-decay-style cosine)
data=(--data-path "$out/corpus_text_document" --split 949,50,1 --eval-interval 100 --eval-iters 8 --log-interval 50)
rm -rf "$out/ckpt"
step "$weft" compile models/gpt2.xml "${train[@]}" --world-size 8 --tp 2 --pp 2 -o "$out/train-8.plan"
step "${mpi[@]}" -np 8 "$weft" run "$out/train-8.plan" "${data[@]}" --steps 500 --save "$out/ckpt" --save-interval 100 \
  --log "$out/metrics-8.jsonl"
step "$weft" compile models/gpt2.xml "${train[@]}" --world-size 4 --pp 2 -o "$out/train-4.plan"
step "${mpi[@]}" -np 4 "$weft" run "$out/train-4.plan" "${data[@]}" --steps 500 --load "$out/ckpt" --save "$out/ckpt" \
  --log "$out/metrics-4.jsonl"
cat "$out/metrics-8.jsonl" "$out/metrics-4.jsonl" > "$out/metrics.jsonl"
step "$weft" plot "$out/metrics.jsonl" --title "tiny GPT-2 on the licenses: 8 ranks, then 4 from the checkpoint" \
  -o "$out/loss.svg"
"$weft" plot "$out/metrics.jsonl" --title "tiny GPT-2 on the licenses: 8 ranks, then 4 from the checkpoint" \
  -o "$out/loss.png"
last=$(tail -n 1 "$out/metrics.jsonl")
printf '\nThe loss: %s at iteration 1, %s at iteration %s (validation %s); the byte-level uniform is 5.55.\n' \
  "$(head -n 1 "$out/metrics.jsonl" | sed 's/.*"loss": \([0-9.]*\).*/\1/')" \
  "$(echo "$last" | sed 's/.*"loss": \([0-9.]*\).*/\1/')" "$(echo "$last" | sed 's/{"iteration": \([0-9]*\).*/\1/')" \
  "$(echo "$last" | sed -n 's/.*"val_loss": \([0-9.]*\).*/\1/p')"
printf 'The pictures: %s/gpt2.svg (the partitioned model), %s/schedule.svg (the timeline), %s/loss.svg and .png\n' "$out" "$out" "$out"
printf '(the loss curve); the training logs: %s/metrics.jsonl; the checkpoints: %s/ckpt.\n' "$out" "$out"
