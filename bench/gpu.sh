#!/usr/bin/env bash
# gpu.sh [OUTDIR]: weft's kernels on a GPU, in one go.
#   1. build/tests/test_backends: every launch of every tiny model (9
#      layouts) on the CUDA backend against the CPU backend, and the
#      executor's GEMMs (cuBLASLt) and strided copies against their
#      definitions;
#   2. build/bench/kernel_time: each kernel of Llama-2 7B (2 layers, seq 4096,
#      micro-batch 1, bf16, one GPU) at its real size, against the GPU's
#      copy bandwidth measured in the same run;
#   3. bench/torch_kernels.py: eager PyTorch doing the same ops at the same
#      sizes (the baseline, same run);
#   4. bench/attn_compare.py: weft's attention against PyTorch's flash SDPA,
#      forward and backward, seq 1024/4096/8192, head dims 64/128, causal and
#      not, into bench/results/YYYY-MM-DD-DEVICE.json;
#   5. test_backends again under compute-sanitizer's memcheck, then racecheck
#      (shared memory: the tensor-core attention's tiles), when there is one;
#   6. weft run on the GPU: tiny GPT-2, Llama-2 and T5 (fp32, 3 steps) with
#      --device cuda against --device cpu, losses and parameters within 1e-4
#      (bench/run_compare.py), on one rank and on 4 (tp 2, pp 2) sharing the
#      GPU through MPI (GPT-2 124M's training speed is step 8's); and the
#      same with --cuda-graphs off, bit for bit the runs replayed from graphs;
#   7. bench/comm_gpu.sh: a one-rank run over NCCL completes, and a rank stopped
#      mid-run is named by the other, which ends the job within the deadline
#      (over NCCL with two GPUs, over MPI staged through the host on one);
#      test_comm (the communicators' own tests, NCCL's bootstrap on the GPU);
#   8. train: bench/train_compare.py, GPT-2 124M training (micro-batch 16, seq
#      1024, bf16, AdamW) by weft, eager PyTorch and torch.compile (and
#      llm.c where LLMC_DIR names a checkout carried to the machine), and by
#      weft with --cuda-graphs off and with --gemm-epilogues off: tokens/s,
#      MFU, weft's predicted against measured step and device memory, into
#      bench/results/YYYY-MM-DD-DEVICE.json (copied to OUTDIR too) and a
#      markdown table; TRAIN_COMPARE_ARGS adds its flags (e.g. "--models
#      124m,1.5b --micro-batch 8"); its timeout TRAIN_COMPARE_SECONDS, 540 s
#      (not yet timed on a GPU: weft compiles the model, then three or four
#      programs train it).
# Logs go to OUTDIR (default build/gpu). Needs a built tree (make test builds
# the test and the benchmark) and a GPU; PLAN may name a plan compiled
# beforehand, else build/weft compiles it here.  STEPS picks steps by name
# (default: all, "backends kernels torch attention memcheck racecheck run
# train nccl", about 36 minutes at their timeouts' worst); under a 10-minute
# limit run STEPS="backends attention" first, then STEPS=train in a call of
# its own (timeout_s 600; build the tree in an earlier call), then the rest.
# Without a GPU, build/tests/test_attention and test_backends run the
# kernels' CUDA source on the CPU (tests/cuda_emu.h): what this adds is the
# hardware, and the time.
set -uo pipefail
export PATH=$PATH:/usr/local/cuda/bin
cd "$(dirname "$0")/.."
out=${1:-build/gpu}
mkdir -p "$out"
plan=${PLAN:-$out/llama7b-2l.plan}
steps=" ${STEPS:-backends kernels torch attention memcheck racecheck run train nccl} "
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
if want racecheck && command -v compute-sanitizer >/dev/null; then
  step "racecheck"
  timeout "${RACECHECK_SECONDS:-180}" compute-sanitizer --tool racecheck --print-limit 20 \
    build/tests/test_backends >"$out/racecheck.txt" 2>&1
  echo "racecheck: status $?"; grep -E "RACECHECK SUMMARY|ERROR SUMMARY|hazard|PASSED|FAILED" "$out/racecheck.txt" | head -20
fi
if want run; then
  step "weft run: CUDA against the CPU (tiny models, fp32, 3 steps), then GPT-2 124M bf16 training"
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fails=0
  for model in gpt2 llama2 t5; do
    for ranks in 1 4; do
      lay=(); [ "$ranks" = 4 ] && lay=(--world-size 4 --tp 2 --pp 2 --global-batch-size 4)
      [ "$ranks" = 4 ] && [ "$model" = t5 ] && lay=(--world-size 4 --tp 2 --global-batch-size 4) # T5: pp 2 needs --epp
      p="$out/run-$model-$ranks"
      build/weft compile "models/$model.xml" --variant tiny "${lay[@]}" -o "$p.plan" >"$p.compile.txt" 2>&1 ||
        { echo "$model x$ranks: compile failed"; tail -3 "$p.compile.txt"; fails=$((fails + 1)); continue; }
      launch=(); [ "$ranks" = 4 ] && launch=(mpirun --oversubscribe -np 4)
      for dev in cpu cuda; do
        timeout 120 "${launch[@]}" build/weft run "$p.plan" --steps 3 --device "$dev" --log "$p.$dev.jsonl" \
          --dump-params "$p.$dev.params" >"$p.$dev.txt" 2>&1 || { echo "$model x$ranks --device $dev: status $?"; tail -5 "$p.$dev.txt"; }
      done
      echo "-- $model, $ranks rank(s): cuda against cpu"
      python3 bench/run_compare.py "$p.cuda" "$p.cpu" --rtol 1e-4 | tail -6 || fails=$((fails + 1))
      grep "CUDA graphs" "$p.cuda.txt"
      # the same steps launch by launch: step 3 replayed its graphs, so the two agree to the bit
      timeout 120 "${launch[@]}" build/weft run "$p.plan" --steps 3 --device cuda --cuda-graphs off --log "$p.eager.jsonl" \
        --dump-params "$p.eager.params" >"$p.eager.txt" 2>&1 || { echo "$model x$ranks --cuda-graphs off: status $?"; tail -5 "$p.eager.txt"; }
      echo "-- $model, $ranks rank(s): CUDA graphs against launch by launch"
      python3 bench/run_compare.py "$p.cuda" "$p.eager" --rtol 0 | tail -3 || fails=$((fails + 1))
    done
  done
  echo "run comparisons failed: $fails"
fi
if want train; then
  step "training speed: GPT-2 124M, weft against eager PyTorch and torch.compile (and llm.c with LLMC_DIR)"
  # shellcheck disable=SC2086 # TRAIN_COMPARE_ARGS: flags, split on spaces
  PYTHONUNBUFFERED=1 timeout "${TRAIN_COMPARE_SECONDS:-540}" python3 bench/train_compare.py --out build/train_compare \
    ${TRAIN_COMPARE_ARGS:-} 2>&1 | tee "$out/train_compare.txt"
  cp bench/results/"$(date +%F)"-*.json "$out"/ 2>/dev/null
fi
if want nccl; then
  step "communicators: NCCL, a stopped rank"
  timeout 200 bench/comm_gpu.sh "$out" 2>&1 | tee "$out/comm_gpu.txt"
  timeout 120 build/tests/test_comm 2>&1 | tee "$out/test_comm.txt" | grep -E "^\[  |SKIP|took|rank [01]: "
fi
