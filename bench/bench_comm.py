"""Communication of the three distributed algorithms at the paper's student size, on gloo/CPU.

    python bench/bench_comm.py --workers 2 4 --reps 5 --out /tmp/bench_comm.json

Spawns N gloo workers (one torch thread each) holding the paper-size student (5 x 768 uni-LSTM,
192 inputs, 3,000 senones: 24.2M params) and times each algorithm's own update on synthetic
gradients (N(0, 1e-3), different per worker and step), without forward/backward:
* sync: after_backward (one all-reduce of the flat gradient);
* gtc: after_backward (encode into the residual, two all-gathers, decode), target fraction 0.1%,
  tau from the first step's quantile then adapted; bytes and seconds over the last 10 of
  --gtc-reps steps (i.i.d. synthetic gradients are GTC's worst case: no signal, the residual
  is a random walk, so tau must grow to ~30 sigma for 0.1% to fire);
* bmuf: one block sync (all-reduce of the model + block-momentum filter), bytes per step for
  block = 50.
Bytes are what each worker hands to its collectives (see millionhours.distributed).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from millionhours import distributed as D
from millionhours.models import AcousticModel, ModelConfig

BLOCK = 50


def worker(rank, world, port, reps, gtc_reps, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=600))
    torch.manual_seed(0)
    model = AcousticModel(ModelConfig(num_senones=3000, input_dim=192, layers=5, cells=768,
                                      bidirectional=False))
    params = D.flat_params(model)
    g = torch.Generator().manual_seed(rank)
    res = {}
    for algo, kw in (("sync", {}), ("gtc", {"target_fraction": 0.001}),
                     ("bmuf", {"block": 1, "eta": 1 - 1 / world})):
        sync = D.make_sync({"algorithm": algo, algo: kw}, world)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        times, byts = [], []
        for step in range(gtc_reps + 1 if algo == "gtc" else reps):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g) * 1e-3
            if algo == "bmuf":                     # a local step's worth of drift per worker
                with torch.no_grad():
                    for p in params:
                        p.add_(p.grad)
            before = sync.comm.bytes
            dist.barrier()
            t0 = time.perf_counter()
            if algo == "bmuf":
                sync.after_backward(model)
                sync.after_step(model, opt, step + 1)
            else:
                sync.after_backward(model)
            dt = time.perf_counter() - t0
            if algo == "gtc" and step == 0:
                continue                            # the quantile start-up
            times.append(dt)
            byts.append(sync.comm.bytes - before)
        st = sync.stats()
        if algo == "gtc":                           # steady state: the last 10 steps
            times, byts = times[-10:], byts[-10:]
        per_step = statistics.mean(byts) / (BLOCK if algo == "bmuf" else 1)
        res[algo] = {"seconds_per_sync": statistics.median(times), "bytes_per_sync":
                     statistics.mean(byts), "bytes_per_step": per_step,
                     "dense_bytes_per_step": st["dense_bytes_per_step"],
                     "ratio_to_dense": per_step / st["dense_bytes_per_step"],
                     "fired_fraction": st.get("fired_fraction"), "params": sync.num_params}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


def run(world: int, reps: int, gtc_reps: int, tmp: str) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = os.path.join(tmp, f"bench_comm_{world}.json")
    mp.start_processes(worker, args=(world, port, reps, gtc_reps, out), nprocs=world, start_method="spawn")
    with open(out) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--gtc-reps", type=int, default=30,
                    help="GTC steps after the first; bytes and times over the last 10")
    ap.add_argument("--out", default=None)
    ap.add_argument("--tmpdir", default="/tmp")
    args = ap.parse_args()
    results = {"torch": torch.__version__, "cpus": os.cpu_count(),
               "loadavg_before": os.getloadavg(), "runs": {}}
    for n in args.workers:
        results["runs"][str(n)] = r = run(n, args.reps, args.gtc_reps, args.tmpdir)
        for algo, v in r.items():
            print(f"N={n} {algo:5s} bytes/step {v['bytes_per_step']:12.0f}  "
                  f"ratio to dense {v['ratio_to_dense']:.5f}  "
                  f"s/sync {v['seconds_per_sync']:.3f}"
                  + (f"  fired {v['fired_fraction']:.5f}" if v["fired_fraction"] else ""),
                  flush=True)
    results["loadavg_after"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
