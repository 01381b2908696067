#!/usr/bin/env bash
# kernels.sh: the fused kernels of Llama-2 70B at tp 8, pp 4 on 32 ranks
# (80 layers, hidden 8192, 64 heads, 8 query groups, ffn 28672): how many
# distinct kernels, and how long NVRTC takes for sm_80, sm_90 and PTX, with
# a cold cache (a fresh $XDG_CACHE_HOME) and then warm (the same again).
# Also the same model at 2 and at 96 layers (tp 8, pp 1): a deeper model
# must not need more kernels.  Baseline: weft compile --arch with the warm cache, in the same
# run (what a compile costs once NVRTC's work is cached).
set -euo pipefail
cd "$(dirname "$0")/.."
weft=build/weft
[ -x "$weft" ] || make --no-print-directory >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

llama70="models/llama2.xml --num-layers 80 --hidden-size 8192 --num-attention-heads 64 --num-query-groups 8 --ffn-hidden-size 28672"
layout="--tp 8 --pp 4 --world-size 32 --global-batch-size 128 --bf16"

ms() { local t0 t1; t0=$(date +%s%N); "$@" >"$out/last.txt"; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
kernels_line() { grep -o 'kernels: .*' "$out/last.txt"; }

export XDG_CACHE_HOME="$out/cache"
cold=$(ms $weft compile $llama70 $layout -o "$out/l.plan"); cold_line=$(kernels_line)
warm=$(ms $weft compile $llama70 $layout -o "$out/l2.plan"); warm_line=$(kernels_line)
cmp -s "$out/l.plan" "$out/l2.plan" && same="byte-identical" || same="DIFFERENT"
depth() {
  ms $weft compile models/llama2.xml --num-layers "$1" --hidden-size 8192 --num-attention-heads 64 --num-query-groups 8 \
    --ffn-hidden-size 28672 --tp 8 --pp 1 --world-size 8 --global-batch-size 128 --bf16 -o "$out/d.plan" >/dev/null
  kernels_line | sed 's/;.*//'
}
two_line=$(depth 2)
deep_line=$(depth 96)
size=$(stat -c %s "$out/l.plan")

printf 'llama-2 70b, tp 8 pp 4, 32 ranks, bf16\n'
printf '  cold cache: compile %6d ms; %s\n' "$cold" "$cold_line"
printf '  warm cache: compile %6d ms; %s\n' "$warm" "$warm_line"
printf '  the two plans are %s; plan %d KiB\n' "$same" $((size / 1024))
printf '  cold / warm: %.1fx\n' "$(echo "$cold / $warm" | bc -l)"
printf 'depth, tp 8 pp 1 on 8 ranks:  2 layers: %s\n' "$two_line"
printf '                             96 layers: %s\n' "$deep_line"
