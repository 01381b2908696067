#!/usr/bin/env bash
# cpu.sh: GPT-2 124M trained on this machine's CPU by weft (one rank) and, in
# the same run, by PyTorch (bench/torch_gpt2.py: the same model, micro-batch
# 4, sequence 64, fp32, AdamW fused) in a virtual environment made here from
# PyPI.  Prints each one's seconds a step and tokens/s, and weft's over
# PyTorch's; then weft's time by kind of action and its slowest kernels.
#   bench/cpu.sh [STEPS]      (default 6; the first 2 are warm-up for both)
# OpenBLAS picks its kernels by the CPU it recognises: the banner of weft run
# names them, and says where weft run chose others for a CPU OpenBLAS did not
# know (tools/cmd_run.c; PyTorch uses its own BLAS).  A step takes up to
# twice as long while another process holds a core: run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-6}
make --no-print-directory build/weft >/dev/null
out=build/bench-cpu
mkdir -p "$out"
build/weft compile models/gpt2.xml --micro-batch-size 4 --seq-length 64 --global-batch-size 4 --arch sm_90 \
  -o "$out/gpt2-124m.plan" >/dev/null
echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%F)"
build/weft run "$out/gpt2-124m.plan" --steps "$((steps + 2))" --log "$out/weft.jsonl" --profile > "$out/weft.txt"
sed -n '1p' "$out/weft.txt"
# weft: the median step time after the 2 warm-up steps
weft_s=$(python3 -c "
import json, statistics, sys
t = [json.loads(l)['step_time'] for l in open('$out/weft.jsonl')][2:]
print(statistics.median(t))")
venv=build/bench-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch, numpy' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch numpy
fi
torch_line=$("$venv/bin/python" bench/torch_gpt2.py --steps "$steps" --warmup 2)
torch_s=$(echo "$torch_line" | sed -n 's/.*: \([0-9.]*\) ms a step.*/\1/p')
python3 -c "
w, t = $weft_s, $torch_s / 1e3
print(f'weft:    {w * 1e3:.1f} ms a step, {256 / w:.0f} tokens/s')
print('$torch_line'.replace('torch ', 'pytorch: ', 1))
print(f'weft tokens/s over PyTorch tokens/s: {t / w:.2f}')"
sed -n '/^rank 0.s time/,$p' "$out/weft.txt"
