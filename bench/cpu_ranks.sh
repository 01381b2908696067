#!/usr/bin/env bash
# cpu_ranks.sh: GPT-2 124M (micro-batch 4, sequence 64, fp32, AdamW) on this
# machine's CPU, one run each: 1 rank, 2 data-parallel ranks and 2
# tensor-parallel ranks, each at the same global batch per step.  Prints each
# one's median seconds a step after 2 warm-up steps, its tokens/s, and its
# ratio to 1 rank's; then each run's time by kind of action (rank 0).  The
# BLAS takes the cores over the ranks (weft run's default), so 2 ranks on 2
# cores run 1 thread each.
#   bench/cpu_ranks.sh [STEPS]      (default 6)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-6}
make --no-print-directory build/weft >/dev/null
out=build/bench-cpu-ranks
mkdir -p "$out"
mpi=(mpirun --oversubscribe --bind-to none) # bound to one core each, a lone rank could not use the other
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%F)"
base=""
for layout in "1" "2 --dp" "2 --tp 2"; do
  set -- $layout
  ranks=$1; shift
  name="1 rank"; [ "$ranks" = 2 ] && { [ "${1:-}" = "--dp" ] && name="dp 2" || name="tp 2"; }
  flags=(); [ "${1:-}" = "--tp" ] && flags=(--tp 2)
  build/weft compile models/gpt2.xml --micro-batch-size 4 --seq-length 64 --global-batch-size 8 --arch sm_90 \
    --world-size "$ranks" "${flags[@]}" -o "$out/plan-$ranks-${1:-one}" >/dev/null
  "${mpi[@]}" -np "$ranks" build/weft run "$out/plan-$ranks-${1:-one}" --steps "$((steps + 2))" --log "$out/log.jsonl" > "$out/run.txt"
  s=$(python3 -c "
import json, statistics
t = [json.loads(l)['step_time'] for l in open('$out/log.jsonl')][2:]
print(statistics.median(t))")
  base=${base:-$s}
  python3 -c "print(f'$name: {$s * 1e3:8.1f} ms a step, {512 / $s:7.0f} tokens/s, {$base / $s:.2f}x 1 rank\'s tokens/s')"
  sed -n 's/^rank 0.s time:/    rank 0: /p' "$out/run.txt"
done
