#!/usr/bin/env bash
# comm_gpu.sh [OUTDIR]: the communicators on a GPU (runtime/comm.h), bench/gpu.sh's "nccl" step.
#   1. one rank, --comm nccl: the run completes over NCCL (its communicators made, one per group, and freed);
#   2. two data-parallel ranks, one stopped (SIGSTOP) mid-run: the other names it and the job ends within the
#      deadline (--timeout 10, plus the roll call's 5 s): over NCCL where there are two GPUs, else over MPI
#      staged through the host (NCCL takes one GPU a rank, so two ranks on one GPU run over MPI).
# One PASS or FAIL line each; the status is the number that failed.  Needs weft run --device cuda.
set -uo pipefail
export PATH=$PATH:/usr/local/cuda/bin OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd "$(dirname "$0")/.."
out=${1:-build/gpu}
mkdir -p "$out"
arch=${ARCH:-sm_90}
deadline=10
failed=0
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
[ "$gpus" -ge 1 ] || { echo "FAIL comm: no GPU (nvidia-smi -L lists none)"; exit 1; }
for n in 1 2; do
  build/weft compile models/gpt2.xml --variant tiny --world-size $n --global-batch-size 8 --arch "$arch" \
    -o "$out/comm-$n.plan" >/dev/null || { echo "FAIL comm: cannot compile the $n-rank plan"; exit 1; }
done

timeout 120 build/weft run "$out/comm-1.plan" --device cuda --comm nccl --steps 3 >"$out/comm-nccl-1.txt" 2>&1
rc=$?
if [ $rc -eq 0 ] && grep -q "over nccl" "$out/comm-nccl-1.txt"; then
  echo "PASS one rank over NCCL: $(grep 'iterations in' "$out/comm-nccl-1.txt")"
else
  echo "FAIL one rank over NCCL (status $rc):"; tail -5 "$out/comm-nccl-1.txt"; failed=$((failed + 1))
fi

comm=mpi
[ "$gpus" -ge 2 ] && comm=nccl
rm -f "$out"/comm-rank*.pid
mpirun --allow-run-as-root --oversubscribe -np 2 bash -c \
  "echo \$\$ > $out/comm-rank\$OMPI_COMM_WORLD_RANK.pid; export WEFT_CUDA_DEVICE=\$((OMPI_COMM_WORLD_LOCAL_RANK % $gpus));
   exec build/weft run $out/comm-2.plan --device cuda --comm $comm --steps 1000000 --log-interval 1000 --timeout $deadline" \
  >"$out/comm-stopped.txt" 2>&1 &
job=$!
for _ in $(seq 120); do grep -q "iteration" "$out/comm-stopped.txt" && [ -s "$out/comm-rank1.pid" ] && break; sleep 1; done
stopped=$(cat "$out/comm-rank1.pid" 2>/dev/null)
start=$(date +%s)
[ -n "$stopped" ] && kill -STOP "$stopped"
for _ in $(seq 60); do kill -0 $job 2>/dev/null || break; sleep 1; done
took=$(($(date +%s) - start))
hung=0
kill -0 $job 2>/dev/null && hung=1
for p in $(cat "$out"/comm-rank*.pid 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
wait $job
rc=$?
if [ -n "$stopped" ] && [ $hung -eq 0 ] && [ $rc -ne 0 ] && [ $took -le $((deadline + 15)) ] &&
   grep -qE "stopped answering|nothing moved" "$out/comm-stopped.txt"; then
  echo "PASS a stopped rank, over $comm: the job ended $took s after (deadline $deadline s): $(grep -hE 'stopped answering|nothing moved' "$out/comm-stopped.txt" | head -1)"
else
  echo "FAIL a stopped rank, over $comm (status $rc, $took s, hung $hung):"; tail -8 "$out/comm-stopped.txt"; failed=$((failed + 1))
fi
exit $failed
