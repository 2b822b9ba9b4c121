#!/usr/bin/env python
"""The BLSTM's ways of running a right-padded batch, timed against the fused kernel.

Usage: python bench/bench_blstm.py [--profile paper] [--rows B] [--frames T] [--seconds S]
           [--num-senones N] [--out results.json]

For one batch shape (default: the paper teacher's training batch, 228 x 163), times forward and
forward+backward of:
  fused       one nn.LSTM call over both directions (exact only when no row is padded);
  reversal    `_blstm_by_reversal`, the model's exact path for padded batches (each direction
              of each layer alone, the backward one on rows reversed within their lengths);
and checks that the reversal path gives the same outputs as packed sequences on a padded batch.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from millionhours import config, models
from millionhours.bin import train_am


def timed(fn, device, seconds: float) -> float:
    """Seconds per call, after 3 warm-up calls; the device queue stays full between calls."""
    for _ in range(3):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or n < 3:
        fn()
        n += 1
        if n % 5 == 0:
            sync()
    sync()
    return (time.perf_counter() - t0) / n


def packed_reference(model, x, lengths):
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                                     enforce_sorted=False)
    h, _ = model.lstm(packed)
    h, _ = torch.nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])
    return model.output(h)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--role", default="teacher")
    ap.add_argument("--rows", type=int, default=228)
    ap.add_argument("--frames", type=int, default=163)
    ap.add_argument("--num-senones", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    s = train_am.settings(config.load_params(args.params, args.profile), args.role)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"
    torch.manual_seed(0)
    model = models.build_model(s["model"], args.num_senones).to(device)
    b, t = args.rows, args.frames
    x = torch.randn(b, t, model.cfg.input_dim, device=device)
    # a realistic plan batch: rows padded by up to a bucket width (8 frames)
    lengths = torch.randint(t - 8, t + 1, (b,))
    lengths[0] = t

    def step(lens, train: bool):
        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                y = model(x, lens)
            if train:
                y.float().mean().backward()
        return run

    out = {"device": torch.cuda.get_device_name() if amp else "cpu", "shape": [b, t],
           "model": model.summary(args.role)}
    for train in (False, True):
        model.train(train)
        ctx = torch.enable_grad() if train else torch.inference_mode()
        with ctx:
            fused = timed(step(None, train), device, args.seconds)
            rows = {"fused": fused, "reversal": timed(step(lengths, train), device, args.seconds)}
        key = "train" if train else "forward"
        out[key] = {k: {"ms": 1e3 * v, "frames_per_s": b * t / v, "of_fused": fused / v}
                    for k, v in rows.items()}
    model.eval()
    with torch.inference_mode():
        ref = packed_reference(model.float(), x, lengths)
        y = model(x, lengths)
        mask = torch.arange(t, device=device)[None, :] < lengths.to(device)[:, None]
        diffs = {"reversal": float((y - ref).abs()[mask].max())}
    out["max_abs_diff_vs_packed_fp32"] = diffs
    for key in ("forward", "train"):
        for name, r in out[key].items():
            print(f"{key:8s} {name:11s} {r['ms']:9.2f} ms {r['frames_per_s']:12,.0f} frames/s "
                  f"{100 * r['of_fused']:6.1f}% of fused")
    print(f"max |diff| vs packed (fp32): {diffs}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
