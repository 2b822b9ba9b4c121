"""A cost model of one student epoch over the paper's 1M hours: a projection, not a measurement.

From the bytes each algorithm sends per step (measured here: results' `distributed` blocks, or
the algorithms' definitions), the GPU throughput of the bare student step
(../shared/research/gpu_anchor.md: 2.42M frames/s, bf16, one H200, batch 1024 x 128) and a link
bandwidth, it projects per step, for N workers each taking a batch of `batch_frames`:

    compute   t_c = batch_frames / frames_per_s
    comm      t_x = link_bytes x 8 / bandwidth + hops x latency   (ring collectives)
    step      t = t_c + t_x                                       (no overlap: an upper bound)

with the bytes on a worker's link per step (P parameters, 4-byte values and 4-byte GTC words):
    sync       2 (N - 1) / N x 4P                         ring all-reduce, every step
    gtc        (N - 1) x 4 f P + codec_s                  all-gather of the fired words (f:
                                                          fired fraction) + threshold and pack
    bmuf       2 (N - 1) / N x 4P / block                 one model all-reduce per block
    two_tier   (G - 1) x 4 f P + 2 (K - 1) / K x 4P / block   GTC in groups of G, BMUF over
                                                          K = N / G groups
and for the epoch: steps = frames / (N x batch_frames), wall = steps x t, GPU-hours = wall x N,
scaling efficiency = t_c / t. What it leaves out: overlap of communication with the backward
pass (which can hide t_x up to t_c), stragglers, the data pipeline, and convergence (whether N
workers need more epochs: that is what T3 measures).
"""
from __future__ import annotations

from dataclasses import dataclass, field

HOURS = 1_000_000            # the paper's unlabeled data
FRAMES_PER_HOUR = 3600 * 100 / 3     # 30 ms LFR frames


@dataclass
class Setup:
    params: int = 24_160_000          # the paper-size student (5 x 768 LSTM, 3,000 senones)
    frames_per_s: float = 2.42e6      # bare student train step on one H200 (bf16)
    batch_frames: int = 1024 * 128    # per worker and step, as measured
    hours: float = HOURS
    fired_fraction: float = 0.001     # GTC: share of the weights sent per worker and step
    codec_s: float = 0.78e-3          # GTC: threshold + pack of a 24M gradient on the GPU
    block: int = 50                   # BMUF: steps per model all-reduce
    group_size: int = 16              # two-tier: workers per GTC group
    latency_s: float = 10e-6          # per hop of a ring collective
    workers: list = field(default_factory=lambda: [16, 64, 256])
    bandwidths_gbps: list = field(default_factory=lambda: [25.0, 400.0])


ALGORITHMS = ("sync", "gtc", "bmuf", "two_tier")


def link_bytes(algo: str, n: int, s: Setup) -> float:
    """Bytes on one worker's link per step (ring collectives)."""
    dense = 4.0 * s.params
    if n == 1:
        return 0.0
    if algo == "sync":
        return 2 * (n - 1) / n * dense
    if algo == "gtc":
        return (n - 1) * 4 * s.fired_fraction * s.params
    if algo == "bmuf":
        return 2 * (n - 1) / n * dense / s.block
    if algo == "two_tier":
        g = min(s.group_size, n)
        k = n // g
        return (g - 1) * 4 * s.fired_fraction * s.params + 2 * (k - 1) / max(k, 1) * dense / s.block
    raise ValueError(f"unknown algorithm '{algo}'; use one of {', '.join(ALGORITHMS)}")


def hops(algo: str, n: int, s: Setup) -> float:
    """Latency-bound hops per step (a ring all-reduce takes 2 (N - 1), an all-gather N - 1)."""
    if n == 1:
        return 0.0
    g = min(s.group_size, n)
    k = n // g
    return {"sync": 2 * (n - 1), "gtc": 2 * (n - 1),     # the counts, then the words
            "bmuf": 2 * (n - 1) / s.block,
            "two_tier": 2 * (g - 1) + 2 * (k - 1) / s.block}[algo]


def project(algo: str, n: int, gbps: float, s: Setup) -> dict:
    """One row: per-step times (ms), epoch wall hours, GPU-hours, scaling efficiency."""
    t_c = s.batch_frames / s.frames_per_s
    b = link_bytes(algo, n, s)
    t_x = b * 8 / (gbps * 1e9) + hops(algo, n, s) * s.latency_s
    if algo in ("gtc", "two_tier") and n > 1:
        t_x += s.codec_s
    t = t_c + t_x
    frames = s.hours * FRAMES_PER_HOUR
    steps = frames / (n * s.batch_frames)
    wall_h = steps * t / 3600
    return {"algorithm": algo, "workers": n, "gbps": gbps, "link_mb_per_step": b / 1e6,
            "compute_ms": 1e3 * t_c, "comm_ms": 1e3 * t_x, "step_ms": 1e3 * t,
            "epoch_wall_h": wall_h, "gpu_hours": wall_h * n, "efficiency": t_c / t,
            "steps": steps}


def table(s: Setup) -> list[dict]:
    return [project(a, n, bw, s) for bw in s.bandwidths_gbps for n in s.workers
            for a in ALGORITHMS]


def markdown(rows: list[dict], s: Setup) -> str:
    head = (f"Projection (not a measurement) of one epoch over {s.hours:,.0f} h "
            f"({s.hours * FRAMES_PER_HOUR:.3g} frames at 30 ms) for the {s.params / 1e6:.2f}M-"
            f"parameter student at {s.frames_per_s / 1e6:.2f}M frames/s per GPU, batch "
            f"{s.batch_frames:,} frames per worker, GTC fired fraction {s.fired_fraction:g}, "
            f"BMUF block {s.block}, two-tier groups of {s.group_size}; no overlap of "
            f"communication with compute (src/millionhours/scale_model.py).\n\n")
    lines = ["| link | workers | algorithm | MB/step on the link | comm ms | step ms | "
             "epoch wall h | GPU-hours | efficiency |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['gbps']:g} Gb/s | {r['workers']} | {r['algorithm']} | "
                     f"{r['link_mb_per_step']:.2f} | {r['comm_ms']:.1f} | {r['step_ms']:.1f} | "
                     f"{r['epoch_wall_h']:.2f} | {r['gpu_hours']:.0f} | "
                     f"{100 * r['efficiency']:.0f}% |")
    return head + "\n".join(lines) + "\n"
