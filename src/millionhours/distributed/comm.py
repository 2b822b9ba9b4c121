"""The communicator interface the algorithms use, and its byte counting (one place for both
transports: `Comm`, torch.distributed processes; `simulated.SimComm`, virtual workers).

Each collective counts the bytes this worker contributes (the logical message) and a ring
estimate of the bytes on its link: 2(N-1)/N x B for an all-reduce of B bytes, (N-1) x B for an
all-gather of B bytes per worker, B for a broadcast from this worker; `count=False` leaves
bookkeeping traffic (start-up, resume checks) out. A subclass moves the data:
_all_reduce(t) (in place, sum), _all_gather(t) -> list in rank order, _broadcast(t, src).
"""
from __future__ import annotations

import time

import torch


class CommBase:
    def __init__(self, world: int, rank: int):
        self.world, self.rank = world, rank     # within the group
        self.bytes = 0            # logical bytes sent by this worker (counted calls only)
        self.wire_bytes = 0.0     # ring estimate of bytes on this worker's link
        self.seconds = 0.0        # time inside counted collectives

    def _run(self, op, nbytes: int, wire: float, count: bool):
        t0 = time.perf_counter()
        out = op()
        if count:
            self.bytes += nbytes
            self.wire_bytes += wire
            self.seconds += time.perf_counter() - t0
        return out

    def all_reduce_(self, t: torch.Tensor, count: bool = True) -> torch.Tensor:
        """In-place sum over workers (every worker ends with the same bits)."""
        if self.world > 1:
            b = t.numel() * t.element_size()
            self._run(lambda: self._all_reduce(t), b, 2 * (self.world - 1) / self.world * b,
                      count)
        return t

    def all_gather(self, t: torch.Tensor, count: bool = True) -> list[torch.Tensor]:
        """Every worker's `t` (same shape on all), in rank order."""
        if self.world == 1:
            return [t]
        b = t.numel() * t.element_size()
        return self._run(lambda: self._all_gather(t), b, (self.world - 1) * b, count)

    def broadcast_(self, t: torch.Tensor, src: int = 0, count: bool = False) -> torch.Tensor:
        """In place, from the group's rank `src`."""
        if self.world > 1:
            b = t.numel() * t.element_size() if self.rank == src else 0
            self._run(lambda: self._broadcast(t, src), b, b, count)
        return t
