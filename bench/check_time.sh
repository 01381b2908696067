#!/usr/bin/env bash
# check_time.sh: wall time of `weft check` on each model file at its default
# size, and on the largest configurations the flags reach (Llama 2 70B, and a
# GPT-3 175B-sized GPT-2: 96 layers, hidden 12288, 96 heads).
# Prints the median of RUNS runs (default 20), in milliseconds, per case, and
# beside it a baseline from the same run: xmllint parsing the same file and
# validating it against models/weft.rng, which is libxml2's share of the work.
#   bench/check_time.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
weft=build/weft
[ -x "$weft" ] || make --no-print-directory >/dev/null

cases=(
  "gpt2 124M|models/gpt2.xml"
  "llama2 7B|models/llama2.xml"
  "mixtral 8x7B|models/mixtral.xml"
  "t5 small|models/t5.xml"
  "llava 7B|models/llava.xml"
  "llama2 70B|models/llama2.xml --num-query-groups 8 --num-layers 80 --hidden-size 8192 --num-attention-heads 64 --ffn-hidden-size 28672"
  "gpt 175B shape|models/gpt2.xml --num-layers 96 --hidden-size 12288 --num-attention-heads 96 --seq-length 2048 --max-position-embeddings 2048"
)

median_ms() {
  local times=() t0 t1
  for ((i = 0; i < runs; i++)); do
    t0=$(date +%s%N)
    # shellcheck disable=SC2086
    eval "$1" >/dev/null 2>&1
    t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1000}'
}

printf '%-16s %9s %11s %7s %6s %8s  %s\n' "case" "weft ms" "xmllint ms" "ratio" "ops" "tensors" "command"
for c in "${cases[@]}"; do
  name=${c%%|*} args=${c#*|} file=${args%% *}
  # shellcheck disable=SC2086
  json=$($weft check $args --json)
  ops=$(grep -o '"ops": [0-9]*' <<<"$json" | grep -o '[0-9]*$')
  tensors=$(grep -o '"tensors": [0-9]*' <<<"$json" | grep -o '[0-9]*$')
  w=$(median_ms "$weft check $args --json")
  x=$(median_ms "xmllint --noout --relaxng models/weft.rng $file")
  printf '%-16s %9s %11s %7s %6s %8s  weft check %s\n' "$name" "$w" "$x" "$(awk "BEGIN {printf \"%.2f\", $w / $x}")" \
    "$ops" "$tensors" "$args"
done
