#!/usr/bin/env bash
# predict_cpu.sh: weft run's predicted step against its measured one, tiny
# GPT-2 on this machine's CPU at four layouts (1 rank, tp 2, pp 2, dp 2; a
# global batch of 8 sequences each).  weft run fits the CPU's GEMM and
# kernel rates to the run's own (summed over the ranks, the first step left
# out), so the ratio shows how well the rest is predicted: the schedule, the
# waits between stages, the collectives and the transfers.  Prints each
# layout's "step time:" line and the rates it fitted.
#   bench/predict_cpu.sh [STEPS]      (default 8)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-8}
make --no-print-directory build/weft >/dev/null
out=build/bench-predict-cpu
mkdir -p "$out"
mpi=(mpirun --oversubscribe --bind-to none)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%F); $steps steps"
for layout in "1" "2 --tp 2" "2 --pp 2" "2"; do
  set -- $layout
  ranks=$1; shift
  name="1 rank"; [ "$ranks" = 2 ] && name="${1:---dp} 2"; name=${name#--}
  build/weft compile models/gpt2.xml --variant tiny --global-batch-size 8 --arch cpu --world-size "$ranks" "$@" \
    -o "$out/plan-$ranks-${1:-dp}" >/dev/null
  "${mpi[@]}" -np "$ranks" build/weft run "$out/plan-$ranks-${1:-dp}" --steps "$steps" > "$out/run.txt"
  echo "$name: $(sed -n 's/^step time: //p' "$out/run.txt")"
  sed -n "s/^  predicted on cpu: /    /p" "$out/run.txt"
done
