#!/usr/bin/env python3
"""attn_compare.py: weft's attention against PyTorch's flash SDPA, forward
and backward, at sequences 1024, 4096 and 8192, head dims 64 and 128,
causal and not (bf16, batch 1, 32 heads; bench/gpu.sh runs it).

For each (head dim, causal, seq) it compiles a one-layer Llama-2 plan of that
shape (a copy of models/llama2.xml with causal="false" for the non-causal
ones; hidden 32 x head dim), times its attention kernel with
build/bench/kernel_time --only attention (forward: NAME_fwd; backward:
delta, bwd_kv, bwd_q), and times F.scaled_dot_product_attention under
sdpa_kernel(FLASH_ATTENTION) on the same sizes in the same run (CUDA events
around batches, the median of 7, as bench/torch_kernels.py).  FLOPs as
kernel_time counts them: 4*B*H*S*S*D forward, 2.5 times that backward,
halved when causal.  The entries are merged into
bench/results/YYYY-MM-DD-DEVICE.json (bench/results.py; an entry of the same
name, pass, head dim, seq and causal is replaced).

    python3 bench/attn_compare.py [--out build/gpu] [--seqs 1024,4096,8192] [--dims 64,128]
"""
import argparse
import os
import re
import subprocess
import sys

import results

HEADS = 32


def run(cmd, timeout):
    """cmd's stdout; exits with its stderr when it fails."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        sys.exit(f"{' '.join(cmd)}: status {r.returncode}\n{r.stdout}{r.stderr}")
    return r.stdout


def weft_times(out, d, causal, seq, arch):
    """(forward us, backward us) of the plan's attention kernel."""
    model = os.path.join(out, "llama2-causal.xml" if causal else "llama2-full.xml")
    if not os.path.exists(model):
        with open("models/llama2.xml") as f:
            text = f.read()
        with open(model, "w") as f:
            f.write(text if causal else text.replace('causal="true"', 'causal="false"'))
    plan = os.path.join(out, f"attn-d{d}-s{seq}-{'causal' if causal else 'full'}.plan")
    run(["build/weft", "compile", model, "--num-layers", "1", "--seq-length", str(seq), "--hidden-size", str(HEADS * d), "--num-attention-heads", str(HEADS), "--micro-batch-size", "1",
         "--global-batch-size", "1", "--bf16", "--arch", arch, "-o", plan], 300)
    text = run(["build/bench/kernel_time", plan, "--only", "attention"], 300)
    times = {}
    for line in text.splitlines():  # k3_attention  forward  1x32x4096  29173.0  4.7 TFLOP/s
        m = re.match(r"^\S*attention\s+(forward|backward)\s+\S+\s+([0-9.]+)", line)
        if m:
            times[m.group(1)] = float(m.group(2))
    if set(times) != {"forward", "backward"}:
        sys.exit(f"kernel_time gave no attention times for {plan}:\n{text}")
    return times["forward"], times["backward"]


def sdpa_times(d, causal, seq):
    """(forward us, backward us) of flash SDPA on (1, HEADS, seq, d) bf16."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_kernels import timed

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, seq, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        fwd = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        grad = torch.randn_like(out)
        bwd = timed(lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True))
    return fwd * 1e6, bwd * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="build/gpu")
    ap.add_argument("--seqs", default="1024,4096,8192")
    ap.add_argument("--dims", default="64,128")
    a = ap.parse_args()
    import torch

    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    os.makedirs(a.out, exist_ok=True)
    device = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}"
    entries = []
    print(f"# {device}; weft attention against SDPA (flash), bf16, batch 1, {HEADS} heads")
    print(f"{'pass':9} {'D':>4} {'seq':>6} {'causal':>6} {'weft us':>12} {'sdpa us':>10} {'ratio':>8} {'weft TFLOP/s':>13}")
    for d in (int(x) for x in a.dims.split(",")):
        for causal in (True, False):
            for seq in (int(x) for x in a.seqs.split(",")):
                w = weft_times(a.out, d, causal, seq, arch)
                b = sdpa_times(d, causal, seq)
                flops = 4.0 * HEADS * seq * seq * d * (0.5 if causal else 1)
                for i, name in enumerate(("forward", "backward")):
                    f = flops * (2.5 if i else 1)
                    entries.append({"name": "attention", "device": device, "pass": name, "head_dim": d, "seq": seq,
                                    "causal": causal, "weft_us": round(w[i], 1), "baseline": "torch SDPA (flash)",
                                    "baseline_us": round(b[i], 1), "tflops": round(f / w[i] / 1e6, 2)})
                    print(f"{name:9} {d:4} {seq:6} {str(causal):>6} {w[i]:12.1f} {b[i]:10.1f} {w[i] / b[i]:7.1f}x"
                          f" {f / w[i] / 1e6:13.2f}", flush=True)
    path = results.path_for(device)
    results.merge(path, entries, lambda e: tuple(e.get(k) for k in ("name", "pass", "head_dim", "seq", "causal")))
    print(f"# {len(entries)} entries in {path}")


if __name__ == "__main__":
    main()
