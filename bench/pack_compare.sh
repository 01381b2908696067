#!/usr/bin/env bash
# pack_compare.sh BEFORE_WEFT: each plan's working set (MiB, summed over its
# stages) as BEFORE_WEFT (a weft built at another commit) plans it and as
# build/weft does, for a few models and layouts, training and forward only.
set -uo pipefail
cd "$(dirname "$0")/.."
before=${1:?usage: bench/pack_compare.sh PATH/TO/OTHER/build/weft}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '%-44s %-6s %12s %12s\n' "model and layout" "mode" "before MiB" "after MiB"
while IFS='|' read -r name flags; do
  for mode in train infer; do
    for w in "$before" build/weft; do
      # shellcheck disable=SC2086 # flags: split on spaces
      $w compile $flags --mode $mode --arch cpu -o "$out/pk.plan" >/dev/null || echo "compile failed: $name" >&2
      $w inspect "$out/pk.plan" --json | python3 -c "import json,sys; j=json.load(sys.stdin); print(sum(r['memory']['working set'] for r in j['roles'])/2**20)"
    done | paste -sd' ' | awk -v n="$name" -v m="$mode" '{printf "%-44s %-6s %12.1f %12.1f\n", n, m, $1, $2}'
  done
done <<'CASES'
gpt2 124M, tp 2 pp 4, mb 4, bf16|models/gpt2.xml --world-size 16 --tp 2 --pp 4 --micro-batch-size 4 --global-batch-size 128 --bf16
gpt2 124M, 1 GPU, mb 16, bf16|models/gpt2.xml --micro-batch-size 16 --global-batch-size 16 --bf16
gpt2 1.5B, tp 5, mb 4, bf16|models/gpt2.xml --num-layers 48 --hidden-size 1600 --num-attention-heads 25 --world-size 5 --tp 5 --micro-batch-size 4 --global-batch-size 16 --bf16
llama2 7B, tp 2 pp 2, mb 1, bf16|models/llama2.xml --world-size 4 --tp 2 --pp 2 --micro-batch-size 1 --global-batch-size 8 --bf16
mixtral tiny, ep 2 tp 2 sp|models/mixtral.xml --variant tiny --world-size 4 --ep 2 --tp 2 --sequence-parallel --global-batch-size 8
t5 tiny, pp 2 epp 1|models/t5.xml --variant tiny --world-size 3 --pp 2 --epp 1 --global-batch-size 4
CASES
