#!/usr/bin/env python3
"""torch_kernels.py: PyTorch (eager) doing what weft's fused kernels do, at
the sizes of bench/gpu.sh's plan (Llama-2 7B layers, micro-batch 1, seq
4096, bf16, one GPU): the baseline for build/bench/kernel_time in the same
run.  Each line times what one weft kernel does, with CUDA events around
batches of launches, the median of 7 batches, after a warm-up; inputs are
random (never zeros).  Bytes are the least the op must move (each input read
once, each output written once), as kernel_time counts them.

    python3 bench/torch_kernels.py [--tokens 4096] [--hidden 4096] ...
"""
import argparse

import torch
import torch.nn.functional as F


def timed(fn, target_ms=5.0):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    one = max(start.elapsed_time(end), 1e-3)
    n = max(1, min(500, int(target_ms / one)))
    times = []
    for _ in range(7):
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / n)
    times.sort()
    return times[3] * 1e-3  # seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=11008)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32000)
    a = ap.parse_args()
    dev, bf = "cuda", torch.bfloat16
    T, Hd, FF, H, V = a.tokens, a.hidden, a.ffn, a.heads, a.vocab
    D = Hd // H
    torch.manual_seed(0)
    r = lambda *s, dtype=bf: torch.randn(*s, device=dev, dtype=torch.float32).to(dtype)

    big = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    big2 = torch.empty_like(big)
    big.random_(0, 255)
    copy_s = timed(lambda: big2.copy_(big))
    copy_rate = 2 * big.numel() / copy_s
    del big, big2
    print(f"# torch {torch.__version__} on {torch.cuda.get_device_name()}; copy: {copy_rate / 1e9:.0f} GB/s")
    print(f"{'op (eager PyTorch)':44} {'us':>10} {'MB':>10} {'GB/s':>8} {'of copy':>8}")

    def row(name, fn, nbytes=None, flops=None):
        s = timed(fn)
        if flops:
            print(f"{name:44} {s * 1e6:10.1f} {'':>10} {flops / s / 1e12:6.1f} TFLOP/s")
        else:
            print(f"{name:44} {s * 1e6:10.1f} {nbytes / 1e6:10.1f} {nbytes / s / 1e9:8.0f} {100 * nbytes / s / copy_rate:7.0f}%")

    table, ids = r(V, Hd), torch.randint(0, V, (T,), device=dev)
    row("embedding", lambda: F.embedding(ids, table), 2 * T * Hd * 2 + T * 4)
    x, w = r(T, Hd), r(Hd)
    row("rms_norm", lambda: F.rms_norm(x, (Hd,), w, 1e-5), 2 * T * Hd * 2 + Hd * 2)
    o = r(T, Hd)
    row("add + rms_norm (two launches)", lambda: F.rms_norm(x + o, (Hd,), w, 1e-5), 4 * T * Hd * 2)
    q = r(1, H, T, D)
    pos = torch.arange(T, device=dev, dtype=torch.float32)
    inv = 10000.0 ** (-torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D)
    ang = torch.outer(pos, inv)
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(bf), torch.cat([ang.sin()] * 2, -1).to(bf)

    def rotary():
        h = q.shape[-1] // 2
        return q * cos + torch.cat([-q[..., h:], q[..., :h]], -1) * sin

    row("rotary (q, eager)", rotary, 2 * T * Hd * 2)
    g, u = r(T, FF), r(T, FF)
    row("swiglu: silu(g) * u", lambda: F.silu(g) * u, 3 * T * FF * 2)
    qa, ka, va = (r(1, H, T, D).requires_grad_() for _ in range(3))
    flops = 4.0 * H * T * T * D * 0.5
    row("attention forward (SDPA, causal)", lambda: F.scaled_dot_product_attention(qa, ka, va, is_causal=True), flops=flops)
    out = F.scaled_dot_product_attention(qa, ka, va, is_causal=True)
    dout = torch.randn_like(out)
    row("attention backward (SDPA, causal)",
        lambda: torch.autograd.grad(out, (qa, ka, va), dout, retain_graph=True), flops=2.5 * flops)
    logits, labels = r(T, V).requires_grad_(), torch.randint(0, V, (T,), device=dev)
    row("cross_entropy forward (bf16 logits)", lambda: F.cross_entropy(logits, labels), T * V * 2)
    loss = F.cross_entropy(logits, labels)
    row("cross_entropy backward", lambda: torch.autograd.grad(loss, logits, retain_graph=True), 2 * T * V * 2)
    p = torch.nn.Parameter(torch.randn(V, Hd, device=dev))
    p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.1, fused=True)
    row("AdamW step (fused=True, fp32, vocab x hidden)", opt.step, p.numel() * 4 * 7)


if __name__ == "__main__":
    main()
