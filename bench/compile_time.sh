#!/usr/bin/env bash
# compile_time.sh: how long weft compile takes, and how large the plan is, for
# the two large configurations of issue 5:
#   GPT-3 175B (96 layers, hidden 12288, 96 heads) at tp 8, pp 16 on 1024 ranks
#   a 1T model (128 layers, hidden 25600, 160 heads) at tp 8, pp 64 on 3072 ranks
# both with sequence 2048, micro-batch 1 and a global batch of 1536 samples.
# The median of RUNS runs (default 5).  Baseline: weft check of the same model
# (read, unroll, shapes, no layout), in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
weft=build/weft
[ -x "$weft" ] || make --no-print-directory >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

gpt3="models/gpt2.xml --num-layers 96 --hidden-size 12288 --num-attention-heads 96 --seq-length 2048 --max-position-embeddings 2048"
big="models/gpt2.xml --num-layers 128 --hidden-size 25600 --num-attention-heads 160 --seq-length 2048 --max-position-embeddings 2048"

median_ms() {
  local times=() t0 t1
  for ((i = 0; i < runs; i++)); do
    t0=$(date +%s%N)
    eval "$1" >/dev/null
    t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.0f", a[int((NR+1)/2)]/1000}'
}

printf '%-12s %6s %8s %12s %12s %8s %10s %12s\n' "model" "ranks" "micro" "compile ms" "check ms" "ratio" "plan" "instr/stage"
for c in "gpt3-175b|$gpt3|--tp 8 --pp 16 --world-size 1024" "1t|$big|--tp 8 --pp 64 --world-size 3072"; do
  IFS='|' read -r name model layout <<<"$c"
  cmd="$weft compile $model $layout --global-batch-size 1536 -o $out/$name.plan"
  ms=$(median_ms "$cmd")
  chk=$(median_ms "$weft check $model")
  size=$(stat -c %s "$out/$name.plan")
  micro=$($weft inspect "$out/$name.plan" --json | grep -o '"micro_batches": [0-9]*' | grep -o '[0-9]*$')
  instr=$($weft inspect "$out/$name.plan" --json | grep -o '"instructions": [0-9]*' | head -1 | grep -o '[0-9]*$')
  ranks=${layout##*world-size }
  ratio=$(awk -v a="$ms" -v b="$chk" 'BEGIN { printf "%.0f", a / (b > 0 ? b : 1) }')
  printf '%-12s %6s %8s %12s %12s %7sx %9sK %12s\n' "$name" "$ranks" "$micro" "$ms" "$chk" "$ratio" "$((size / 1024))" "$instr"
done
