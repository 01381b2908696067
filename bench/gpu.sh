#!/usr/bin/env bash
# gpu.sh [OUTDIR]: weft's kernels on a GPU, in one go.
#   1. build/tests/test_backends: every launch of every tiny model (9
#      layouts) on the CUDA backend against the CPU backend;
#   2. build/bench/kernel_time: each kernel of Llama-2 7B (2 layers, seq 4096,
#      micro-batch 1, bf16, one GPU) at its real size, against the GPU's
#      copy bandwidth measured in the same run;
#   3. bench/torch_kernels.py: eager PyTorch doing the same ops at the same
#      sizes (the baseline, same run);
#   4. bench/attn_compare.py: weft's attention against PyTorch's flash SDPA,
#      forward and backward, seq 1024/4096/8192, head dims 64/128, causal and
#      not, into bench/results/YYYY-MM-DD-DEVICE.json;
#   5. test_backends again under compute-sanitizer's memcheck, when there is one;
#   6. bench/comm_gpu.sh: a one-rank run over NCCL completes, and a rank stopped
#      mid-run is named by the other, which ends the job within the deadline
#      (over NCCL with two GPUs, over MPI staged through the host on one);
#      test_comm (the communicators' own tests, NCCL's bootstrap on the GPU).
# Logs go to OUTDIR (default build/gpu). Needs a built tree (make test builds
# the test and the benchmark) and a GPU; PLAN may name a plan compiled
# beforehand, else build/weft compiles it here.  STEPS picks steps by name
# (default: all, "backends kernels torch attention memcheck nccl", about 17 minutes
# at their timeouts' worst); under a 10-minute limit run
# STEPS="backends attention" first (attention's backward at seq 8192 takes
# seconds a launch until it moves to the tensor cores), then the rest.
set -uo pipefail
export PATH=$PATH:/usr/local/cuda/bin
cd "$(dirname "$0")/.."
out=${1:-build/gpu}
mkdir -p "$out"
plan=${PLAN:-$out/llama7b-2l.plan}
steps=" ${STEPS:-backends kernels torch attention memcheck nccl} "
step() { echo "== $*"; }
want() { [[ $steps == *" $1 "* ]]; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,memory.total --format=csv 2>&1 | tee "$out/gpu.txt"
if want kernels && [ ! -f "$plan" ]; then
  build/weft compile models/llama2.xml --num-layers 2 --micro-batch-size 1 --global-batch-size 1 --bf16 --arch sm_90 \
    -o "$plan" || exit 1
fi
if want backends; then
  step "CUDA against the CPU"
  timeout 200 build/tests/test_backends 2>&1 | tee "$out/test_backends.txt"
fi
if want kernels; then
  step "weft kernels"
  timeout 90 build/bench/kernel_time "$plan" 2>&1 | tee "$out/kernel_time.txt"
fi
if want torch; then
  step "eager PyTorch"
  PYTHONUNBUFFERED=1 timeout 90 python3 bench/torch_kernels.py 2>&1 | tee "$out/torch_kernels.txt"
fi
if want attention; then
  step "attention against SDPA (flash)"
  PYTHONUNBUFFERED=1 timeout "${ATTN_SECONDS:-420}" python3 bench/attn_compare.py --out "$out" 2>&1 | tee "$out/attn_compare.txt"
fi
if want memcheck && command -v compute-sanitizer >/dev/null; then
  step "memcheck"
  timeout "${MEMCHECK_SECONDS:-150}" compute-sanitizer --tool memcheck --print-limit 20 build/tests/test_backends >"$out/memcheck.txt" 2>&1
  echo "memcheck: status $?"; grep -E "ERROR SUMMARY|Invalid|PASSED|FAILED" "$out/memcheck.txt" | head -20
fi
if want nccl; then
  step "communicators: NCCL, a stopped rank"
  timeout 200 bench/comm_gpu.sh "$out" 2>&1 | tee "$out/comm_gpu.txt"
  timeout 120 build/tests/test_comm 2>&1 | tee "$out/test_comm.txt" | grep -E "^\[  |SKIP|took|rank [01]: "
fi
