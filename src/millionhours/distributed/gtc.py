"""`gtc`: gradient threshold compression (Strom, Interspeech 2015).

Each worker keeps a residual r (fp32, one value per weight, zero at the start). Every step:
1. r += g, this worker's raw gradient (the learning rate is applied later by the optimizer);
2. every element with |r| >= tau emits one quantum: the word (index << 1) | sign (int32; index
   into all trainable parameters flattened in model order, sign bit 1 = negative) and r -= +-tau.
   At most one quantum per element per step (Strom): a larger residual drains over the next
   steps, it is delayed, never dropped. So each element moves by at most tau per step: a tau
   tiny next to the gradients degenerates to sign-SGD with step tau. `max_quanta` > 1 lets an
   element send up to that many quanta (its word repeated) in one step; with a tiny tau and a
   large max_quanta the update tends to the dense one (the residual keeps less than tau).
3. the words of all workers are all-gathered: first one int64 per worker (its word count), then
   every worker's words padded to the largest count (gloo all_gather needs equal sizes; padding
   words are -1 and skipped). Bytes sent per worker per step = 8 + 4 x max count.
4. every worker decodes all messages into integer counts c (sum of +-1 per element, exact in any
   order) and sets grad = c x tau / N: the MEAN over workers, so the aggregate is on the scale of
   one worker's gradient, like `sync` and single-process training, and the same learning rate
   serves all three. The optimizer (SGD momentum, typically) then applies it on every rank alike:
   momentum after decoding, so the replicas stay bit-identical.

tau is per parameter tensor (LSTM gates, biases and the softmax have gradients of very different
sizes; one global tau would let a few tensors take all the traffic). Fixed: `tau` > 0 and no
`target_fraction`. Adapted (`target_fraction` > 0): after each step, from the fired counts of all
workers (known identically everywhere from the messages, so no extra traffic),
    tau_t *= clamp(((fired_t + 1) / (target x N x numel_t + 1)) ** gain, 0.95, 2)   (gain 0.2)
rising fast but falling at most 5% a step: residuals pile up just under a high tau, and a fast
fall fires them all at once (with a symmetric 1/2..2 clamp the fired fraction oscillated in
bursts, 50x the target on i.i.d. gradients; this keeps it within about 2x of the target).
and, unless `tau` is given, tau_t starts at the (1 - target) quantile of |g_t| of the first step,
averaged over workers (one float per tensor; counted as bytes).

State per worker (checkpointed): the residual and tau. Each rank saves its own checkpoint file.
stats(): fired_fraction = quanta sent by all workers / (N x P) at the last step (with
max_quanta > 1 it counts quanta, so it can exceed 1), its mean over the run, and tau's range.
"""
from __future__ import annotations

import math

import torch

from millionhours.distributed import Sync, flat_grad, flat_params, set_flat_grad


class GTC(Sync):
    name = "gtc"

    def __init__(self, tau: float | None = None, target_fraction: float | None = 0.001,
                 gain: float = 0.2, max_quanta: int = 1, comm=None):
        super().__init__(comm)
        if not (tau and tau > 0) and not (target_fraction and target_fraction > 0):
            raise ValueError("distributed.gtc: give tau > 0 (fixed) or target_fraction > 0")
        self.tau0, self.target, self.gain = tau, target_fraction, float(gain)
        self.max_quanta = int(max_quanta)
        self.taus: list[float] = []      # per tensor, float64 on the host: same on every rank
        self.residual = None
        self.fired_last = 0.0
        self.fired_sum = 0.0             # sum over this run's steps of the fired fraction

    def _start(self, params) -> None:
        self.sizes = [p.numel() for p in params]
        self.bounds = torch.tensor(self.sizes, device=params[0].device).cumsum(0)
        if self.residual is None:                              # fresh start (not resumed)
            self.residual = torch.zeros(sum(self.sizes), device=params[0].device)
        self.residual = self.residual.to(params[0].device)     # checkpoints load on the CPU
        if not self.taus and self.tau0:
            self.taus = [float(self.tau0)] * len(params)
        self.steps0 = self.steps

    # -- the step
    def after_backward(self, model) -> None:
        self.prepare(model)
        params = flat_params(model)
        g = flat_grad(params)
        if not self.taus:
            self.taus = self._initial_taus(g)
        tau = self._tau_vector(g.device)
        words = self.encode(g, tau)
        counts, fired = self.exchange(words)
        set_flat_grad(params, counts.to(torch.float32).mul_(tau).div_(self.world))
        self._adapt(fired)
        self.syncs += 1

    def encode(self, g: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """Adds g to the residual, takes up to max_quanta +-tau quanta off each element at or
        past tau (one, Strom's rule, by default), and returns them as int32 words
        (index << 1 | negative), an element's index repeated once per quantum."""
        r = self.residual.add_(g)
        idx = (r.abs() >= tau).nonzero().squeeze(1)
        q = torch.div(r[idx], tau[idx], rounding_mode="trunc").clamp_(-self.max_quanta,
                                                                        self.max_quanta)
        r[idx] -= q * tau[idx]
        words = (idx << 1) | (q < 0).long()
        if self.max_quanta > 1:
            words = words.repeat_interleave(q.abs().long())
        return words.to(torch.int32)

    def exchange(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All-gathers every worker's words; returns the summed signs per element (int32) and
        the number of quanta per tensor over all workers."""
        n = torch.tensor([words.numel()], dtype=torch.int64, device=words.device)
        counts = [int(c) for c in self.comm.all_gather(n)]
        buf = torch.full((max(max(counts), 1),), -1, dtype=torch.int32, device=words.device)
        buf[:words.numel()] = words
        msgs = [m[:c] for m, c in zip(self.comm.all_gather(buf), counts)]
        w = torch.cat(msgs).long() if msgs else words.long()
        idx, sign = w >> 1, 1 - 2 * (w & 1)
        total = torch.zeros(self.residual.numel(), dtype=torch.int32, device=words.device)
        total.index_add_(0, idx, sign.to(torch.int32))
        per_tensor = torch.bincount(torch.bucketize(idx, self.bounds, right=True),
                                    minlength=len(self.sizes))
        return total, per_tensor

    # -- tau
    def _tau_vector(self, device) -> torch.Tensor:
        t = torch.tensor(self.taus, dtype=torch.float32, device=device)
        return t.repeat_interleave(torch.tensor(self.sizes, device=device))

    def _initial_taus(self, g: torch.Tensor) -> list[float]:
        """(1 - target) quantile of |g| per tensor, averaged over workers: the first step fires
        about the target fraction."""
        q = []
        for part in g.split(self.sizes):
            k = max(1, min(part.numel(), part.numel() - round(self.target * part.numel()) + 1))
            q.append(part.abs().kthvalue(k).values.double())
        q = self.comm.all_reduce_(torch.stack(q)).div_(self.world)
        return [max(float(x), 1e-12) for x in q]

    def _adapt(self, fired: torch.Tensor) -> None:
        fired = fired.tolist()
        self.fired_last = sum(fired) / (self.world * sum(self.sizes))
        self.fired_sum += self.fired_last
        if not self.target:
            return
        for i, (f, n) in enumerate(zip(fired, self.sizes)):
            ratio = (f + 1) / (self.target * self.world * n + 1)
            self.taus[i] *= min(2.0, max(0.95, ratio ** self.gain))

    # -- checkpoints and reports
    def state_dict(self) -> dict:
        return {**super().state_dict(), "residual": self.residual, "taus": list(self.taus)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.residual, self.taus = state["residual"], list(state["taus"])

    def stats(self) -> dict:
        taus = self.taus or [math.nan]
        run_steps = max(self.steps - getattr(self, "steps0", 0), 1)
        return {**super().stats(), "fired_fraction": self.fired_last,
                "fired_fraction_mean": self.fired_sum / run_steps,
                "target_fraction": self.target, "tau_min": min(taus), "tau_max": max(taus),
                "tau_median": sorted(taus)[len(taus) // 2]}
