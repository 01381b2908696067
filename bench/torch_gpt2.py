#!/usr/bin/env python3
"""torch_gpt2.py: GPT-2 124M trained in PyTorch on the CPU, the baseline for
bench/cpu.sh: the same model as models/gpt2.xml (pre-LayerNorm, learned
positions, GELU (tanh), dropout 0.1, the head tied to the embedding),
micro-batch 4, sequence 64, fp32, AdamW(fused=True) with GPT-2's
initialisation (std 0.02, 0.02/sqrt(2 layers) on the projections).  Prints
seconds per step (the median of the timed steps, after warm-up steps) and
tokens/s.

    python3 bench/torch_gpt2.py [--steps 6] [--warmup 2] [--batch 4] [--seq 64]
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, h, heads, p):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.fc, self.out = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)
        self.heads, self.p = heads, p

    def forward(self, x):
        B, S, H = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(H, dim=2)
        q, k, v = (t.view(B, S, self.heads, H // self.heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, S, H)
        x = x + F.dropout(self.proj(a), self.p, self.training)
        return x + F.dropout(self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh")), self.p, self.training)


class GPT2(nn.Module):
    def __init__(self, vocab=50257, positions=1024, layers=12, h=768, heads=12, p=0.1):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, h), nn.Embedding(positions, h)
        self.blocks = nn.ModuleList(Block(h, heads, p) for _ in range(layers))
        self.lnf = nn.LayerNorm(h)
        self.p = p
        for name, w in self.named_parameters():
            if w.dim() > 1:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(w, std=std)

    def forward(self, ids, labels):
        x = F.dropout(self.wte(ids) + self.wpe.weight[: ids.shape[1]], self.p, self.training)
        for b in self.blocks:
            x = b(x)
        logits = self.lnf(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))  # in fp32, as Megatron


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    a = ap.parse_args()
    torch.manual_seed(1234)
    model = GPT2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    ids = torch.randint(0, 50257, (a.batch, a.seq + 1))
    times = []
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: {s * 1e3:.1f} ms a step, "
          f"{a.batch * a.seq / s:.0f} tokens/s (loss {loss.item():.3f})")


if __name__ == "__main__":
    main()
