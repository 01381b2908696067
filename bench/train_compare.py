#!/usr/bin/env python3
"""train_compare.py: GPT-2 training speed, weft against PyTorch (and llm.c),
in one run on one device (issue 15; bench/gpu.sh's "train" step).

What runs, in this order, each in its own process, one after the other on
the same GPU:
- weft: `build/weft compile models/gpt2.xml --bf16` at GPT-2 124M
  (micro-batch 16, sequence 1024, one rank, one micro-batch a step, AdamW),
  then `build/weft run PLAN --device cuda --steps W+N --data-path ...`.
  Its tokens/s is the tokens of a step over the median of the N timed
  steps' `step_time` in weft's --log JSONL (the first W left out as warm-up);
  step_predicted / step_measured are the "step time: predicted X ms,
  measured Y ms" line it prints (its measured: the mean, its first step
  left out); memory_predicted / memory_measured its "device memory at its
  peak X MiB beyond ...; predicted Y MiB" line (cudaMemGetInfo around the
  run and the allocator's figure, as tools/cmd_run.c prints them).
- torch-eager and torch-compile: bench/torch_gpt2.py's model (the same as
  models/gpt2.xml: pre-LayerNorm, learned positions, GELU (tanh), dropout
  0.1 where models/gpt2.xml has it, the head tied to the embedding), flash
  SDPA (sdpa_kernel(FLASH_ATTENTION): an error, not a slower kernel, where
  flash cannot run), AdamW(fused=True; foreach on the CPU) with weft's settings (lr 1e-4
  constant, betas 0.9/0.999, eps 1e-8, weight decay 0.01 on the matrices
  and none on biases and norms as Megatron and weft do, gradient clipping
  at 1.0).  torch.compile compiles the model (forward and backward); the
  optimizer step is the same fused kernel in both.  Timed with CUDA events
  around each step; the median of the N steps after W warm-up steps (which
  hold torch.compile's compilation).
  Precision (--torch-precision): "master", the default, is what Megatron's
  --bf16 does and what weft's --bf16 does: the parameters and activations
  in bf16, the loss in fp32, fp32 master weights and optimizer state; the
  bf16 gradients are widened into fp32 ones, clipped and applied to the
  master weights, which are then rounded into the bf16 parameters.  With one
  micro-batch a step that is exactly Megatron's path (its fp32 main_grad
  is the one bf16 gradient widened).  "autocast" is PyTorch's usual way,
  fp32 parameters with bf16 autocast (GEMMs on bf16 copies of the weights,
  norms and the loss in fp32, the residual stream in fp32): not the same
  arithmetic, but the baseline a PyTorch user would run; give
  --torch-precision master,autocast for both (baselines torch-eager-autocast
  and torch-compile-autocast).
- llm.c's train_gpt2.cu, only where the environment variable LLMC_DIR
  names a checkout of https://github.com/karpathy/llm.c (the device
  machine cannot download it: carry it there); built there with `make
  train_gpt2cu NO_MULTI_GPU=1 NO_USE_MPI=1 USE_CUDNN=0` unless
  LLMC_DIR/train_gpt2cu exists, run from scratch (`-e d12`) on the same
  tokens (written in llm.c's data format), its printed "N ms" per step,
  the median of the N after W.  llm.c has no dropout, pads the vocabulary
  to 50304 and recomputes GELU in the backward (its defaults).

The inputs are the same for all: random token ids (seeded) written once
with `weft data --tokenizer-type NullTokenizer`, which weft reads with
--data-path (Megatron's GPTDataset: samples of seq+1 tokens, shuffled by
its seed) and PyTorch and llm.c read from the same .bin.

MFU: the model FLOPs of a step, the plan's flops_per_step (`weft inspect
PLAN --json`: weft check's count, the forward's FLOPs times 3, causal
attention counting the pairs it computes) over the step time and the
device's dense bf16 peak: 989 TFLOP/s for an H100 or H200, 312 for an
A100 (--peak-tflops otherwise).  The same FLOPs for every baseline.

Each model's figures are merged into bench/results/YYYY-MM-DD-DEVICE.json
(bench/results.py), one object per baseline: name, device,
weft_tokens_per_s, baseline, baseline_tokens_per_s, mfu (weft's),
memory_predicted, memory_measured (MiB), step_predicted, step_measured
(ms), and baseline_mfu and baseline_memory_measured (the baseline's own
allocator peak, MiB); an entry of the same name and baseline is replaced.
A figure that could not be measured is null.  A markdown table for
bench/README.md ends the output.

    python3 bench/train_compare.py [--out build/gpu] [--models 124m[,1.5b]] [--steps 20] [--warmup 5]
                                   [--baselines torch-eager,torch-compile,llm.c] [--torch-precision master]
    python3 bench/train_compare.py --dry-run     # on the CPU: tiny GPT-2, 5 steps, everything in a temp dir

--dry-run (--device cpu --models tiny --steps 2 --warmup 3, results and
work files in a new temp dir unless --out / --results name them) checks
the parsing and the JSON on a machine without a GPU: weft on the CPU
backend, PyTorch on the CPU (skipped, saying so, where torch is not
installed); on the CPU memory_measured is weft's peak resident set and
memory_predicted its arena plus its bf16 GEMMs' scratch.  Exit status: 0
when every part ran, 1 when one failed (the others still run and are
written), 2 for bad arguments.
"""
import argparse
import contextlib
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import results  # noqa: E402

# The models: the flags of models/gpt2.xml that set them (both sides read this one table).
FLAGS = {"layers": "--num-layers", "hidden": "--hidden-size", "heads": "--num-attention-heads", "vocab": "--vocab-size",
         "positions": "--max-position-embeddings", "seq": "--seq-length", "batch": "--micro-batch-size"}
MODELS = {
    "124m": {"name": "gpt2-124m-train", "layers": 12, "hidden": 768, "heads": 12, "vocab": 50257, "positions": 1024, "seq": 1024, "batch": 16},
    "1.5b": {"name": "gpt2-1.5b-train", "layers": 48, "hidden": 1600, "heads": 25, "vocab": 50257, "positions": 1024, "seq": 1024, "batch": 16},
    "tiny": {"name": "gpt2-tiny-train", "layers": 2, "hidden": 64, "heads": 4, "vocab": 512, "positions": 64, "seq": 32, "batch": 2},
}
# AdamW as weft compiles it (its defaults, Megatron's), the learning rate held constant.
OPTIM = {"lr": 1e-4, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01, "clip_grad": 1.0}
WEFT_OPTIM = ["--lr", str(OPTIM["lr"]), "--lr-decay-style", "constant", "--weight-decay", str(OPTIM["weight_decay"]),
              "--adam-beta1", str(OPTIM["beta1"]), "--adam-beta2", str(OPTIM["beta2"]), "--adam-eps", str(OPTIM["eps"]),
              "--clip-grad", str(OPTIM["clip_grad"])]
DROPOUT = 0.1  # models/gpt2.xml's hidden-dropout
# Dense bf16 peaks from the datasheets (the H200 has the H100's tensor cores).
PEAKS = (("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
SEED = 1234
WEFT = os.environ.get("WEFT_BIN") or "build/weft"  # as the tests name the binary under test


class Failed(Exception):
    """A part of the comparison that did not run; the message says why."""


def run(cmd, timeout, cwd=None, env=None):
    """cmd's stdout and stderr together; Failed with their end when it fails or outruns timeout."""
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd=cwd, env=env)
    except OSError as e:  # not there, not executable
        raise Failed(f"{cmd[0]}: {e.strerror}")
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        raise Failed(f"{' '.join(cmd)}: still running after {timeout} s\n{out[-2000:]}")
    if r.returncode:
        raise Failed(f"{' '.join(cmd)}: status {r.returncode}\n{r.stdout[-3000:]}")
    return r.stdout


def numbers(pattern, text, what, groups):
    """The groups of pattern's last match in text, as floats (None for a group
    that did not take part); all None, saying so, where nothing matched."""
    found = re.findall(pattern, text)
    if not found:
        print(f"note: no {what} in weft run's output (/{pattern}/)", flush=True)
        return [None] * groups
    last = found[-1] if isinstance(found[-1], tuple) else (found[-1],)
    return [float(g) if g != "" else None for g in last]


def device_info(device, peak_tflops):
    """(name, --arch for weft compile, dense bf16 peak in FLOP/s or None)."""
    if device == "cpu":
        name = "cpu"
        with contextlib.suppress(OSError):
            with open("/proc/cpuinfo") as f:
                m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
                name = m.group(1).strip() if m else name
        return name, "cpu", peak_tflops * 1e12 if peak_tflops else None
    try:  # torch.cuda's name for the device, in a process of its own (see torch_version)
        name, cap = run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name()); "
                         "print(''.join(map(str, torch.cuda.get_device_capability())))"], 120).splitlines()[-2:]
    except Failed as e:  # no torch here: nvidia-smi says the same
        try:
            out = run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"], 30).splitlines()[0]
        except Failed as f:
            raise Failed(f"torch.cuda: {e.args[0].splitlines()[-1]}; {f}")
        name, cap = (s.strip() for s in out.split(","))
    arch = "sm_" + cap.strip().replace(".", "")
    peak = peak_tflops * 1e12 if peak_tflops else next((p for key, p in PEAKS if key in name), None)
    return name, arch, peak


def torch_version():
    """The string "torch VERSION", or None where torch does not import.  Asked of another
    process: this one never imports torch, whose hundreds of MiB a forked
    child's peak resident set would count (Linux keeps ru_maxrss across
    exec), and which would hold the GPU's memory while weft measures its own."""
    try:
        return "torch " + run([sys.executable, "-c", "import torch; print(torch.__version__)"], 120).splitlines()[-1]
    except Failed:
        return None


def make_tokens(out, m, count):
    """PREFIX of weft data's files holding `count` random ids below the model's vocabulary (seeded)."""
    jsonl = os.path.join(out, f"tokens-{m['vocab']}-{count}.jsonl")
    prefix = jsonl[: -len(".jsonl")]
    if not os.path.exists(prefix + "_text_document.bin"):
        r = random.Random(SEED)
        with open(jsonl, "w") as f:
            for first in range(0, count, 8192):  # documents of 8192 tokens; GPTDataset joins them
                n = min(8192, count - first)
                f.write(json.dumps({"text": " ".join(str(r.randrange(m["vocab"])) for _ in range(n))}) + "\n")
        run([WEFT, "data", "--input", jsonl, "--output-prefix", prefix, "--tokenizer-type", "NullTokenizer",
             "--vocab-size", str(m["vocab"])], 300)
        os.remove(jsonl)
    return prefix + "_text_document"


def weft_plan(out, m, arch, flags=(), tag=""):
    """(the plan compiled for the model on one rank, its model FLOPs a step); flags: weft compile's own (the
    weft-no-epilogues baseline: --gemm-epilogues off), its file tagged by tag."""
    plan = os.path.join(out, f"{m['name']}-mb{m['batch']}-bf16-{arch}{tag}.plan")
    dims = [a for k, flag in FLAGS.items() for a in (flag, str(m[k]))]
    run([WEFT, "compile", "models/gpt2.xml", *dims, "--global-batch-size", str(m["batch"]), "--bf16", "--arch", arch,
         *WEFT_OPTIM, *flags, "-o", plan], 600)
    return plan, json.loads(run([WEFT, "inspect", plan, "--json"], 60))["flops_per_step"]


def weft_train(out, m, plan, device, steps, warmup, data, timeout, flags=(), tag=""):
    """weft's figures: tokens/s (median step), step predicted and measured (ms), memory predicted and measured (MiB).
    flags: weft run's own (the weft-eager baseline: --cuda-graphs off), its files tagged by tag."""
    log = os.path.join(out, f"{m['name']}.{device}{tag}.jsonl")
    text = run([WEFT, "run", plan, "--device", device, "--steps", str(warmup + steps), "--data-path", data,
                "--split", "1,0,0", "--seed", str(SEED), "--log", log, "--log-interval", str(warmup + steps), *flags], timeout)
    with open(os.path.join(out, f"{m['name']}.{device}{tag}.txt"), "w") as f:
        f.write(text)
    with open(log) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    timed = [r["step_time"] for r in rows if r["iteration"] > warmup and r["step_time"] is not None]
    if len(timed) != steps:
        raise Failed(f"{log}: {len(timed)} timed steps of {steps}")
    predicted, measured = numbers(r"step time: predicted ([0-9.]+) ms, measured ([0-9.]+) ms", text, "step time", 2)
    if device == "cuda":
        used, predicted_mem = numbers(r"device memory at its peak ([0-9.]+) MiB beyond .*?; predicted ([0-9.]+) MiB", text,
                                      "device memory", 2)
    else:  # the peak resident set, against the arena and the bf16 GEMMs' scratch
        used, arena, scratch = numbers(r"peak resident memory ([0-9.]+) MiB: the plan's arena ([0-9.]+) MiB"
                                       r"(?:, the bf16 GEMMs' scratch ([0-9.]+) MiB)?", text, "peak resident memory", 3)
        predicted_mem = None if arena is None else arena + (scratch or 0)
    step = statistics.median(timed)
    return {"tokens_per_s": m["batch"] * m["seq"] / step, "step_median_ms": step * 1e3, "step_predicted": predicted,
            "step_measured": measured, "memory_predicted": predicted_mem, "memory_measured": used, "loss": rows[-1]["loss"]}


def torch_train(out, m, key, device, mode, precision, steps, warmup, data, timeout):
    """A PyTorch baseline, in a process of its own (a fresh allocator and CUDA context): its figures."""
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", mode, "--torch-precision", precision, "--models", key,
           "--device", device, "--steps", str(steps), "--warmup", str(warmup), "--data", data + ".bin",
           "--micro-batch", str(m["batch"])]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    text = run(cmd, timeout, env=env)
    with open(os.path.join(out, f"{m['name']}.torch-{mode}-{precision}.txt"), "w") as f:
        f.write(text)
    line = [s for s in text.splitlines() if s.startswith("RESULT ")]
    if not line:
        raise Failed(f"the torch worker printed no RESULT line:\n{text[-2000:]}")
    return json.loads(line[-1][len("RESULT "):])


def torch_worker(a):
    """In this process: train the model with PyTorch for warmup + steps steps and print RESULT {json}."""
    try:
        import torch
    except ImportError as e:
        sys.exit(f"torch worker: {e}")
    from torch_gpt2 import GPT2

    m = dict(MODELS[a.models], batch=a.micro_batch or MODELS[a.models]["batch"])
    B, S = m["batch"], m["seq"]
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(SEED)
    with open(a.data, "rb") as f:  # uint16 ids, read as int16 (fully supported) and unsigned again
        tokens = torch.frombuffer(bytearray(f.read()), dtype=torch.int16).to(torch.int64) & 0xFFFF
    samples = (len(tokens) - 1) // S
    if samples < 1:
        sys.exit(f"torch worker: {a.data}: fewer than {S + 1} tokens")
    batches = []  # the windows of seq+1 tokens GPTDataset makes, in file order (GPTDataset shuffles them)
    for i in range(a.warmup + a.steps):
        rows = [tokens[j * S: j * S + S + 1] for j in ((i * B + b) % samples for b in range(B))]
        batches.append(torch.stack(rows).to(dev))

    model = GPT2(vocab=m["vocab"], positions=m["positions"], layers=m["layers"], h=m["hidden"], heads=m["heads"], p=DROPOUT).to(dev)
    params = list(model.parameters())
    if a.torch_precision == "master":
        master = [p.detach().clone().float() for p in params]
        for w in master:
            w.grad = torch.zeros_like(w)
        model.to(torch.bfloat16)
        trained = master
    else:
        trained = params
    groups = [{"params": [w for w, p in zip(trained, params) if p.dim() > 1], "weight_decay": OPTIM["weight_decay"]},
              {"params": [w for w, p in zip(trained, params) if p.dim() <= 1], "weight_decay": 0.0}]
    # fused on the GPU; foreach on the CPU, where the fused kernel took 175 ms a step for tiny GPT-2's 137K parameters (torch 2.15)
    opt = torch.optim.AdamW(groups, lr=OPTIM["lr"], betas=(OPTIM["beta1"], OPTIM["beta2"]), eps=OPTIM["eps"],
                            **({"fused": True} if cuda else {"foreach": True}))
    forward = torch.compile(model) if a.torch_worker == "compile" else model
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if a.torch_precision == "autocast" else contextlib.nullcontext()

    def step(batch):
        with autocast:
            loss = forward(batch[:, :-1], batch[:, 1:])
        loss.backward()
        if a.torch_precision == "master":  # Megatron's --bf16: widen, clip, step the fp32 weights, round them back
            torch._foreach_copy_([w.grad for w in master], [p.grad for p in params])
            model.zero_grad(set_to_none=True)
            torch.nn.utils.clip_grad_norm_(master, OPTIM["clip_grad"], foreach=True)
            opt.step()
            with torch.no_grad():
                torch._foreach_copy_(params, master)
        else:
            torch.nn.utils.clip_grad_norm_(params, OPTIM["clip_grad"], foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.detach()

    if cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        attention = sdpa_kernel(SDPBackend.FLASH_ATTENTION)
        torch.cuda.reset_peak_memory_stats()
    else:
        attention = contextlib.nullcontext()
    seconds, losses = [], []
    with attention:
        for i, batch in enumerate(batches):
            if cuda:
                ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                ev[0].record()
                losses.append(step(batch))
                ev[1].record()
                seconds.append(ev)
                if i < a.warmup:  # warm-up (compilation) stays out of the timed steps' queue
                    torch.cuda.synchronize()
            else:
                t0 = time.perf_counter()
                losses.append(step(batch))
                seconds.append(time.perf_counter() - t0)
        if cuda:
            torch.cuda.synchronize()
            seconds = [s.elapsed_time(e) / 1e3 for s, e in seconds]
    timed = seconds[a.warmup:]
    s = statistics.median(timed)
    result = {"tokens_per_s": B * S / s, "step_median_ms": s * 1e3, "step_min_ms": min(timed) * 1e3,
              "step_max_ms": max(timed) * 1e3, "first_step_s": seconds[0], "steps_ms": [round(t * 1e3, 2) for t in seconds],
              "loss": float(losses[-1]), "torch": torch.__version__,
              "memory_measured": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}
    print("RESULT " + json.dumps(result))


def llmc_tokens(data, path):
    """PATH: weft data's tokens (DATA.bin, uint16 ids) in llm.c's data format (llmc/dataloader.h: a header of
    256 int32, the magic 20240520, version 1 and the count of tokens, then the uint16 ids)."""
    with open(data + ".bin", "rb") as f:
        tokens = f.read()
    with open(path, "wb") as f:
        f.write(b"".join(v.to_bytes(4, "little", signed=True) for v in [20240520, 1, len(tokens) // 2] + [0] * 253))
        f.write(tokens)
    return path


def llmc_train(out, m, arch, steps, warmup, data, timeout):
    """llm.c's train_gpt2.cu on the same tokens: its figures."""
    llmc = os.environ["LLMC_DIR"]
    binary = os.path.join(llmc, "train_gpt2cu")
    if m["layers"] not in (12, 24, 36, 48) or m["vocab"] != 50257:
        raise Failed(f"llm.c makes GPT-2 only at 12, 24, 36 or 48 layers and GPT-2's vocabulary, not {m['name']}")
    if not os.path.exists(binary):
        run(["make", "-C", llmc, "train_gpt2cu", "NO_MULTI_GPU=1", "NO_USE_MPI=1", "USE_CUDNN=0",
             f"GPU_COMPUTE_CAPABILITY={arch[len('sm_'):]}"], 600)
    path = llmc_tokens(data, os.path.join(out, os.path.basename(data) + ".llmc.bin"))
    text = run([os.path.abspath(binary), "-i", path, "-j", path, "-e", f"d{m['layers']}", "-b", str(m["batch"]), "-t", str(m["seq"]),
                "-d", str(m["batch"] * m["seq"]), "-x", str(warmup + steps), "-l", str(OPTIM["lr"]), "-c", str(OPTIM["weight_decay"]),
                "-v", "1000000", "-m", "1", "-s", "0", "-n", "0", "-o", os.path.join(out, "llmc-log")], timeout, cwd=out)
    with open(os.path.join(out, f"{m['name']}.llmc.txt"), "w") as f:
        f.write(text)
    ms = [float(x) for n, x in re.findall(r"^step\s+(\d+)/\d+ \|.*?\| ([0-9.]+) ms \|", text, re.M) if int(n) > warmup]
    if len(ms) < steps:
        raise Failed(f"llm.c printed {len(ms)} timed steps of {steps}:\n{text[-2000:]}")
    s = statistics.median(ms) / 1e3
    return {"tokens_per_s": m["batch"] * m["seq"] / s, "step_median_ms": s * 1e3, "memory_measured": None}


def rounded(v, digits):
    """v to `digits` decimals; None where it was not measured."""
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(v, digits)


def significant(v, digits):
    """v to `digits` significant digits; None where it was not measured."""
    return None if v is None or not math.isfinite(v) or v == 0 else round(v, digits - 1 - math.floor(math.log10(abs(v))))


def show(v, fmt):
    """v formatted, or "n/a" where it was not measured."""
    return "n/a" if v is None else format(v, fmt)


def entry(m, device, peak, w, baseline, r):
    """The results object of a model's weft figures (w) beside a baseline's (r), in the fields issue 15 lists, then
    the baseline's MFU (of the same model FLOPs) and its allocator's peak; None for what was not measured."""
    flops = w.get("flops_step")

    def mfu(step_ms):
        return significant(flops / (step_ms / 1e3) / peak, 4) if flops and peak and step_ms else None

    return {"name": m["name"], "device": device, "weft_tokens_per_s": rounded(w.get("tokens_per_s"), 1), "baseline": baseline,
            "baseline_tokens_per_s": rounded(r.get("tokens_per_s"), 1), "mfu": mfu(w.get("step_median_ms")),
            "memory_predicted": rounded(w.get("memory_predicted"), 1), "memory_measured": rounded(w.get("memory_measured"), 1),
            "step_predicted": rounded(w.get("step_predicted"), 2), "step_measured": rounded(w.get("step_measured"), 2),
            "baseline_mfu": mfu(r.get("step_median_ms")), "baseline_memory_measured": rounded(r.get("memory_measured"), 1)}


def table(entries):
    """The markdown table for bench/README.md."""
    f = show

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    lines = ["| model | baseline | weft tokens/s | baseline tokens/s | weft / baseline | weft MFU | baseline MFU "
             "| memory predicted / measured (MiB) | step predicted / measured (ms) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for e in entries:
        w, b = e["weft_tokens_per_s"], e["baseline_tokens_per_s"]
        ratio = f"{w / b:.2f}x" if w and b else "n/a"
        lines.append(f"| {e['name']} | {e['baseline'] or 'none'} | {f(w, ',.0f')} | {f(b, ',.0f')} | {ratio} "
                     f"| {pct(e['mfu'])} | {pct(e['baseline_mfu'])} "
                     f"| {f(e['memory_predicted'], '.1f')} / {f(e['memory_measured'], '.1f')} "
                     f"| {f(e['step_predicted'], '.1f')} / {f(e['step_measured'], '.1f')} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="work files and logs (default build/gpu; --dry-run: a new temp dir)")
    ap.add_argument("--results", help="the file to merge the entries into (default bench/results/YYYY-MM-DD-DEVICE.json; "
                    "--dry-run: that name in --out)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--models", default="124m", help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--micro-batch", type=int, help="instead of the model's micro-batch (16): for 1.5b where 16 does not fit")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    ap.add_argument("--warmup", type=int, default=5, help="steps run first and not timed (default 5)")
    ap.add_argument("--baselines", default="torch-eager,torch-compile,llm.c,weft-eager,weft-no-epilogues",
                    help="weft-eager: weft itself with --cuda-graphs off (what the graphs gain, measured in the same run); "
                         "weft-no-epilogues: its plan compiled --gemm-epilogues off (what cuBLASLt's epilogues gain)")
    ap.add_argument("--torch-precision", default="master", help="master (Megatron's --bf16), autocast, or both: master,autocast")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, where it is no H100, H200 or A100")
    ap.add_argument("--timeout", type=int, default=240, help="seconds for each training run (default 240: weft's and two "
                    "PyTorch runs fit gpu.sh's 540)")
    ap.add_argument("--dry-run", action="store_true", help="--device cpu --models tiny --steps 2 --warmup 3, in a temp dir")
    ap.add_argument("--torch-worker", choices=("eager", "compile"), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_worker:
        return torch_worker(a)
    if a.dry_run:
        a.device, a.models, a.steps, a.warmup = "cpu", "tiny", 2, 3
        a.out = a.out or tempfile.mkdtemp(prefix="train_compare.")
    a.out = os.path.abspath(a.out or os.path.join(ROOT, "build", "gpu"))  # paths given: from where it was started
    a.results = a.results and os.path.abspath(a.results)
    keys, baselines = a.models.split(","), a.baselines.split(",")
    precisions = a.torch_precision.split(",")
    bad = ([k for k in keys if k not in MODELS]
           + [b for b in baselines if b not in ("torch-eager", "torch-compile", "llm.c", "weft-eager", "weft-no-epilogues")]
           + [p for p in precisions if p not in ("master", "autocast")])
    if bad or a.steps < 1 or a.warmup < 1:
        ap.error(f"unknown: {', '.join(bad)}" if bad else "--steps and --warmup: at least 1 (the first step is never timed)")
    os.chdir(ROOT)
    os.makedirs(a.out, exist_ok=True)

    try:
        device, arch, peak = device_info(a.device, a.peak_tflops)
    except Failed as e:
        print(f"train_compare: no {a.device} device to train on: {e}", file=sys.stderr)
        return 1
    print(f"# {device} ({arch}); peak {'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s dense bf16'}; "
          f"{a.warmup} warm-up + {a.steps} timed steps; work files in {a.out}", flush=True)
    have_torch = torch_version()
    if not have_torch:
        print("# skipped: the PyTorch baselines: torch is not installed here (python3 -c 'import torch' fails)", flush=True)
    path = a.results or results.path_for(device, a.out if a.dry_run else os.path.join("bench", "results"))
    failed, entries = [], []

    def write(entry):  # as soon as it is measured: a run stopped later keeps it
        entries.append(entry)
        results.merge(path, [entry], lambda e: (e.get("name"), e.get("baseline")))

    for key in keys:
        m = dict(MODELS[key], batch=a.micro_batch or MODELS[key]["batch"])
        print(f"## {m['name']}: {m['layers']} layers, hidden {m['hidden']}, {m['heads']} heads, vocabulary {m['vocab']}, "
              f"micro-batch {m['batch']}, sequence {m['seq']}, bf16, AdamW, one {a.device} device", flush=True)
        try:
            data = make_tokens(a.out, m, (a.warmup + a.steps) * m["batch"] * m["seq"] + 1)
        except Failed as e:
            failed.append(f"the tokens of {m['name']}")
            print(f"tokens: FAILED: {e}", flush=True)
            continue
        t0 = time.time()
        w, plan = {}, None
        try:
            plan, w["flops_step"] = weft_plan(a.out, m, arch)
            w.update(weft_train(a.out, m, plan, a.device, a.steps, a.warmup, data, a.timeout))
            print(f"weft: {w['tokens_per_s']:.0f} tokens/s ({w['step_median_ms']:.1f} ms a step, the median); step predicted "
                  f"{show(w['step_predicted'], '.1f')} ms, measured {show(w['step_measured'], '.1f')} ms; memory predicted "
                  f"{show(w['memory_predicted'], '.1f')} MiB, measured {show(w['memory_measured'], '.1f')} MiB; loss {w['loss']}; "
                  f"{time.time() - t0:.0f} s", flush=True)
        except Failed as e:
            failed.append(f"weft, {m['name']}")
            print(f"weft: FAILED: {e}", flush=True)
        measured = 0
        for b in baselines:
            for precision in precisions if b.startswith("torch") else ["-"]:
                name = b if not b.startswith("torch") or precision == "master" else f"{b}-{precision}"
                t0 = time.time()
                try:
                    if b == "llm.c":
                        if a.device != "cuda" or "LLMC_DIR" not in os.environ:
                            print(f"{name}: skipped: {'llm.c trains on a GPU' if a.device != 'cuda' else 'LLMC_DIR is not set'}",
                                  flush=True)
                            continue
                        r = llmc_train(a.out, m, arch, a.steps, a.warmup, data, a.timeout)
                    elif b == "weft-eager":
                        if a.device != "cuda" or plan is None:
                            print(f"{name}: skipped: {'CUDA graphs are a GPU run' if a.device != 'cuda' else 'no plan'}",
                                  flush=True)
                            continue
                        r = weft_train(a.out, m, plan, a.device, a.steps, a.warmup, data, a.timeout, ("--cuda-graphs", "off"),
                                       ".eager")
                    elif b == "weft-no-epilogues":
                        if a.device != "cuda" or plan is None:  # the CPU runs an epilogue's kernel after the GEMM either way
                            print(f"{name}: skipped: {'cuBLASLt epilogues are a GPU run' if a.device != 'cuda' else 'no plan'}",
                                  flush=True)
                            continue
                        plain, _ = weft_plan(a.out, m, arch, ("--gemm-epilogues", "off"), "-noepi")
                        r = weft_train(a.out, m, plain, a.device, a.steps, a.warmup, data, a.timeout, (), ".noepi")
                    else:
                        if not have_torch:
                            print(f"{name}: skipped: torch is not installed here", flush=True)
                            continue
                        r = torch_train(a.out, m, key, a.device, b[len("torch-"):], precision, a.steps, a.warmup, data, a.timeout)
                except Failed as e:
                    failed.append(f"{name}, {m['name']}")
                    print(f"{name}: FAILED: {e}", flush=True)
                    continue
                mem = "" if r.get("memory_measured") is None else f", allocator peak {r['memory_measured']:.1f} MiB"
                mem += "" if r.get("first_step_s") is None else f", first step {r['first_step_s']:.1f} s"
                print(f"{name}: {r['tokens_per_s']:.0f} tokens/s ({r['step_median_ms']:.1f} ms a step, the median{mem}); "
                      f"{time.time() - t0:.0f} s", flush=True)
                write(entry(m, device, peak, w, name, r))
                measured += 1
        if not measured and "tokens_per_s" in w:  # weft's figures, with no baseline beside them
            write(entry(m, device, peak, w, None, {}))
    if entries:
        print(f"# {len(entries)} entries in {path}")
    print(f"\n{device}, {'unknown peak' if peak is None else f'MFU of {peak / 1e12:.0f} TFLOP/s'}; "
          f"{have_torch or 'no torch'}; {a.warmup} warm-up + {a.steps} timed steps, the median\n")
    print(table(entries))
    if failed:
        print(f"\nfailed: {'; '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
