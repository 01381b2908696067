#!/usr/bin/env python3
"""run_compare.py A B [--rtol R]: two `weft run`s of one plan, held together.

A and B are prefixes: A.jsonl is one run's --log (a JSON object an
iteration), A.params its --dump-params (exec.h: "weft-params 1\\n", then per
parameter its name as u32 length and bytes, its element count as i64 and
its elements as f32, little-endian).  Every iteration's loss must agree
within R of B's (|a - b| <= R |b|), and every parameter's elements within R
of the parameter's largest magnitude in B (an element near zero is judged
against its tensor, not itself).  Prints per parameter the largest
difference and where it is; exits 1 when any is past R, 2 on bad input.
"""
import argparse
import json
import os
import struct
import sys


def losses(path):
    with open(path) as f:
        return [json.loads(line)["loss"] for line in f if line.strip()]


def params(path):
    out = {}
    with open(path, "rb") as f:
        if f.readline() != b"weft-params 1\n":
            sys.exit(f"{path}: not a weft parameter dump")
        while True:
            head = f.read(4)
            if not head:
                return out
            (n,) = struct.unpack("<I", head)
            name = f.read(n).decode()
            (count,) = struct.unpack("<q", f.read(8))
            out[name] = struct.unpack(f"<{count}f", f.read(4 * count))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rtol", type=float, default=1e-4)
    args = ap.parse_args()
    bad = 0
    missing = [p for p in (args.a + ".jsonl", args.b + ".jsonl", args.a + ".params", args.b + ".params") if not os.path.exists(p)]
    if missing:
        print(f"FAIL: no {', '.join(missing)} (the run stopped before its end? its log says why)")
        return 1
    la, lb = losses(args.a + ".jsonl"), losses(args.b + ".jsonl")
    if len(la) != len(lb) or not la:
        print(f"iterations: {len(la)} in {args.a}.jsonl, {len(lb)} in {args.b}.jsonl")
        return 1
    for i, (x, y) in enumerate(zip(la, lb)):
        rel = abs(x - y) / abs(y) if y else abs(x - y)
        ok = rel <= args.rtol
        bad += not ok
        print(f"iteration {i + 1}: loss {x:.9g} against {y:.9g}, relative difference {rel:.3g}{'' if ok else '  FAIL'}")
    pa, pb = params(args.a + ".params"), params(args.b + ".params")
    if sorted(pa) != sorted(pb):
        print(f"parameters differ in name: {sorted(set(pa) ^ set(pb))}")
        return 1
    worst = 0.0
    for name in pb:
        a, b = pa[name], pb[name]
        scale = max((abs(v) for v in b), default=0.0) or 1.0
        diff, at = max(((abs(x - y), i) for i, (x, y) in enumerate(zip(a, b))), default=(0.0, 0))
        rel = diff / scale
        worst = max(worst, rel)
        if rel > args.rtol:
            bad += 1
            print(f"{name}: element {at} is {a[at]:.9g}, want {b[at]:.9g}: {rel:.3g} of the tensor's largest  FAIL")
    print(f"{len(pb)} parameters: the largest difference {worst:.3g} of its tensor's largest element (bound {args.rtol:g})")
    print("PASS" if not bad else f"FAIL: {bad} past the bound")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
