"""The student's bare training step against the batch shape: how much a CPU gains from larger
batches (the default profile's student, 3 x 192 LSTM, 20 cepstra in, the LFR tree's senones).

Usage: python bench/bench_lstm_batch.py [--threads 1 2] [--senones 1138] [--seconds 4]
           [--shapes 5x200 16x200 32x200 64x200] [--out bench/results_lstm_batch_cpu.json]

Each shape (sequences x LFR frames, no padding) runs forward + CE + backward + Adam step on
tensors already in memory for --seconds after two warm-up steps; frames/s counts LFR frames.
"""
import argparse
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

from millionhours import models


def measure(model, opt, b: int, t: int, senones: int, seconds: float) -> dict:
    x, y = torch.randn(b, t, 192), torch.randint(0, senones, (b, t))
    lengths = torch.full((b,), t)

    def step():
        loss = F.cross_entropy(model(x, lengths).reshape(-1, senones), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    step(), step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    dt = time.perf_counter() - t0
    return {"batch": b, "frames": t, "steps": n, "ms_per_step": round(1000 * dt / n, 2),
            "frames_per_s": round(n * b * t / dt)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--senones", type=int, default=1138)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--shapes", nargs="+", default=["5x200", "16x200", "32x200", "64x200"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    for th in args.threads:
        torch.set_num_threads(th)
        torch.manual_seed(0)
        model = models.build_model({"layers": 3, "cells": 192, "bidirectional": False,
                                    "input_ceps": 20}, args.senones)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        for shape in args.shapes:
            b, t = map(int, shape.split("x"))
            r = dict(measure(model, opt, b, t, args.senones, args.seconds), threads=th)
            rows.append(r)
            print(f"threads {th} batch {b:3d} x {t}: {r['frames_per_s']:7d} frames/s, "
                  f"{r['ms_per_step']:7.1f} ms/step", flush=True)
    out = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "loadavg_after": os.getloadavg(), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
