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

What is compressed (`form`; ../shared/research/distributed.md section 2):
* "gradient" (Strom): the gradient, as above; the optimizer (SGD with momentum, as Strom ran it)
  runs after decoding, on every rank alike.
* "update" (DL4J): each worker's own optimizer step (Adam with its learning rate, its state local
  to the worker) is taken locally, its update (new weights - shared weights) goes into the
  residual, and the shared weights move by the decoded mean update; tau is then in weight units,
  on the order of the learning rate.
* "momentum" (1-bit Adam style): after the dense warm-up Adam's second moment is frozen (bias
  corrected), each worker forms its momentum beta1 m + (1 - beta1) g from the shared m and its own
  gradient, the momentum is compressed with error feedback, and every rank applies
  w -= lr x m / (sqrt(v) + eps) with the decoded mean m. Needs the adam optimizer. A second moment
  frozen early is too large later (at 16 workers, v at step 30 was 3x the one dense Adam ends
  with: steps ~1.8x too small); `refresh_every` K > 0 refreshes it as 0/1 Adam does: every K-th
  compressed step the gradient goes dense (one all-reduce, 1/K of dense bytes per step) and
  v = beta2^K v + (1 - beta2^K) g^2, Adam's time constant from one sample per K steps.
Options for every form: `dense_warmup` steps of dense all-reduce first (of the gradient; the
replicas stay identical), tensors of at most `dense_below` elements (biases) sent dense every
step, and `clip` > 0 keeping the residual within +-clip x tau (DL4J: 5).
"""
from __future__ import annotations

import math

import torch

from millionhours.distributed import (Sync, dense_mean_grad, flat_data, flat_grad, flat_params,
                                      set_flat_data, set_flat_grad)

FORMS = ("gradient", "update", "momentum")


class GTC(Sync):
    name = "gtc"

    def __init__(self, tau: float | None = None, target_fraction: float | None = 0.001,
                 gain: float = 0.2, max_quanta: int = 1, form: str = "gradient",
                 dense_warmup: int = 0, dense_below: int = 0, clip: float = 0.0,
                 refresh_every: int = 0, comm=None):
        super().__init__(comm)
        if not (tau and tau > 0) and not (target_fraction and target_fraction > 0):
            raise ValueError("distributed.gtc: give tau > 0 (fixed) or target_fraction > 0")
        if form not in FORMS:
            raise ValueError(f"distributed.gtc.form: '{form}'; use one of {', '.join(FORMS)}")
        self.tau0, self.target, self.gain = tau, target_fraction, float(gain)
        self.max_quanta = int(max_quanta)
        self.form, self.dense_warmup = form, int(dense_warmup)
        self.dense_below, self.clip = int(dense_below), float(clip)
        self.refresh = int(refresh_every)
        if self.refresh < 0 or (self.refresh and form != "momentum"):
            raise ValueError("distributed.gtc.refresh_every: >= 0, and only with form momentum")
        self._refresh_now = False        # this step's gradient went dense to refresh v
        self.taus: list[float] = []      # per tensor, float64 on the host: same on every rank
        self.residual = None
        self.base = None                 # update/momentum forms: the shared weights
        self.m = self.v = None           # momentum form: shared momentum, frozen 2nd moment
        self.fired_last = 0.0
        self.fired_sum = 0.0             # sum over this run's steps of the fired fraction

    def _start(self, params) -> None:
        self.sizes = [p.numel() for p in params]
        dev = params[0].device
        self.bounds = torch.tensor(self.sizes, device=dev).cumsum(0)
        if self.residual is None:                              # fresh start (not resumed)
            self.residual = torch.zeros(sum(self.sizes), device=dev)
        self.residual = self.residual.to(dev)                  # checkpoints load on the CPU
        # elements sent dense every step (tensors of <= dense_below elements), as a mask
        self.dense_mask = torch.cat([torch.full((n,), n <= self.dense_below, device=dev)
                                     for n in self.sizes])
        self.any_dense = any(n <= self.dense_below for n in self.sizes)
        if self.form != "gradient" and self.base is None:
            self.base = flat_data(params)
        for k in ("base", "m", "v"):
            if getattr(self, k) is not None:
                setattr(self, k, getattr(self, k).to(dev))
        if not self.taus and self.tau0:
            self.taus = [float(self.tau0)] * len(params)
        self.steps0 = self.steps

    def _warming(self) -> bool:
        """The next update is one of the dense warm-up (counted from the run's first step)."""
        return self.steps < self.dense_warmup

    def _refreshing(self) -> bool:
        """The next update refreshes the momentum form's second moment (every K-th after the
        warm-up)."""
        return bool(self.refresh) and not self._warming() and \
            (self.steps - self.dense_warmup + 1) % self.refresh == 0

    # -- the step
    def after_backward(self, model) -> None:
        self.prepare(model)
        params = flat_params(model)
        self._refresh_now = self._refreshing()
        if self._warming():                  # dense mean gradient; every form's replicas agree
            dense_mean_grad(self.comm, params)
            self.syncs += 1
        elif self.form == "gradient":
            set_flat_grad(params, self.compress_mean(flat_grad(params)))
            self.syncs += 1
        elif self._refresh_now:              # momentum: this step's gradient dense, for v
            dense_mean_grad(self.comm, params)
        # update / momentum: the local optimizer step comes first (after_step)

    def after_step(self, model, optimizer, step: int) -> None:
        warming = self._warming()
        self._tick(step)
        if self.form == "gradient":
            return
        params = flat_params(model)
        if warming:                          # dense warm-up: the optimizer moved all alike
            self.base = flat_data(params)
            if self.form == "momentum" and self.steps == self.dense_warmup:
                self.m, self.v = self._adam_moments(params, optimizer)   # the same everywhere
            return
        if self.form == "update":
            new = self.base + self.compress_mean(flat_data(params) - self.base)
        else:
            new = self._momentum_step(params, optimizer)
        set_flat_data(params, new)
        self.base = new
        self.syncs += 1

    def _momentum_step(self, params, optimizer) -> torch.Tensor:
        """1-bit-Adam-style step from the shared weights: the local momentum compressed, the
        decoded mean momentum applied with the frozen second moment."""
        group = optimizer.param_groups[0]
        if self.v is None:
            raise ValueError("distributed.gtc.form momentum: set dense_warmup >= 1 (Adam's "
                             "moments are frozen at the end of the dense warm-up)")
        b1, b2 = group["betas"]
        g = flat_grad(params)
        if self._refresh_now:                # g is the mean over the workers (after_backward)
            decay = b2 ** self.refresh
            self.v.mul_(decay).addcmul_(g, g, value=1 - decay)
        local = self.m * b1 + g * (1 - b1)
        self.m = self.compress_mean(local)
        return self.base - group["lr"] * self.m / (self.v.sqrt() + group["eps"])

    @staticmethod
    def _adam_moments(params, optimizer) -> tuple[torch.Tensor, torch.Tensor]:
        """Adam's first moment and bias-corrected second moment, flat."""
        if "betas" not in optimizer.param_groups[0]:
            raise ValueError("distributed.gtc.form momentum needs the adam optimizer")
        b2 = optimizer.param_groups[0]["betas"][1]
        ms, vs = [], []
        for p in params:
            st = optimizer.state[p]
            t = float(st["step"])
            ms.append(st["exp_avg"].reshape(-1).float())
            vs.append(st["exp_avg_sq"].reshape(-1).float() / (1 - b2 ** t))
        return torch.cat(ms), torch.cat(vs)

    def compress_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over workers of x: dense where dense_mask, else through the residual, the
        +-tau quanta and the all-gather of the words (error feedback)."""
        if not self.taus:
            self.taus = self._initial_taus(x)
        tau = self._tau_vector(x.device)
        dense = self.any_dense
        sparse_x = torch.where(self.dense_mask, 0.0, x) if dense else x
        words = self.encode(sparse_x, tau)
        counts, fired = self.exchange(words)
        out = counts.to(torch.float32).mul_(tau).div_(self.world)
        if dense:
            d = self.comm.all_reduce_(x[self.dense_mask].contiguous()).div_(self.world)
            out[self.dense_mask] = d
        self._adapt(fired)
        return out

    def encode(self, g: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """Adds g to the residual, takes up to max_quanta +-tau quanta off each element at or
        past tau (one, Strom's rule, by default), and returns them as int32 words
        (index << 1 | negative), an element's index repeated once per quantum."""
        r = self.residual.add_(g)
        if self.clip > 0:
            r.clamp_(-self.clip * tau, self.clip * tau)
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
        sparse = sum(n for n in self.sizes if n > self.dense_below)
        self.fired_last = sum(fired) / (self.world * max(sparse, 1))
        self.fired_sum += self.fired_last
        if not self.target:
            return
        for i, (f, n) in enumerate(zip(fired, self.sizes)):
            if n <= self.dense_below:        # sent dense: its tau is never used
                continue
            ratio = (f + 1) / (self.target * self.world * n + 1)
            self.taus[i] *= min(2.0, max(0.95, ratio ** self.gain))

    # -- checkpoints and reports
    def state_dict(self) -> dict:
        return {**super().state_dict(), "residual": self.residual, "taus": list(self.taus),
                "base": self.base, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.residual, self.taus = state["residual"], list(state["taus"])
        self.base, self.m, self.v = state.get("base"), state.get("m"), state.get("v")

    def stats(self) -> dict:
        taus = self.taus or [math.nan]
        run_steps = max(self.steps - getattr(self, "steps0", 0), 1)
        return {**super().stats(), "form": self.form, "dense_warmup": self.dense_warmup,
                "refresh_every": self.refresh,
                "dense_below": self.dense_below, "clip": self.clip,
                "fired_fraction": self.fired_last,
                "fired_fraction_mean": self.fired_sum / run_steps,
                "target_fraction": self.target, "tau_min": min(taus), "tau_max": max(taus),
                "tau_median": sorted(taus)[len(taus) // 2]}
