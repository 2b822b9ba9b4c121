"""`bmuf`: blockwise model-update filtering (Chen & Huo, ICASSP 2016).

Workers take `block` local optimizer steps each on their own data from a shared start point W~,
then one all-reduce averages the models and a block-level momentum filter moves the global model
(the implementation form of fairseq's bmuf.py and CNTK's block-momentum learner):
    gbar = W~ - mean_i(W_i)                 block "gradient" (descent direction)
    v    = eta * v + zeta * gbar            block momentum (v: "delta" in the checkpoint)
    W    = W~ - v                           new global model
    W~   = W - eta * v   (Nesterov, NBM)    or   W~ = W   (classical, CBM)
and every worker restarts from W~. Defaults: eta = 1 - 1/N (each block counts like the N x block
serial steps it replaces), zeta = 1, Nesterov with the local momentum reset after each sync
(CNTK's defaults; fairseq's are classical without reset). With eta = 0 and zeta = 1 it is plain
model averaging. W~ and v are identical on every rank (computed from the same all-reduce), so
after a sync the replicas are bit-identical; between syncs they differ by design.

Warm-up (`warmup_steps`): the first steps average the models after every step (plain averaging,
no block momentum; dense traffic), so early training, where the models move most, does not drift
apart; then blocks start, counted from the end of the warm-up, with v = 0. fairseq instead runs
without any sync and then broadcasts rank 0; averaging keeps every worker's data in the model.

Only full blocks are merged, so traffic is exactly 4 x P per `block` steps. The epoch-end
evaluation and best.pt use the filtered global model W of the last sync (`global_weights` swaps it
in and the local weights back, no communication); local steps after the last full block of the
run are not merged (at most block - 1 of them).

Reset of local momentum: zeroes SGD's momentum_buffer and Adam's first moment (exp_avg); Adam's
second moment and step count are kept. Bytes: 4 x P per sync, i.e. 4 x P / block per step.
"""
from __future__ import annotations

import contextlib

import torch

from millionhours.distributed import Sync, flat_data, flat_params, set_flat_data


class BMUF(Sync):
    name = "bmuf"

    def __init__(self, block: int = 50, eta: float | None = None, zeta: float = 1.0,
                 nesterov: bool = True, reset_momentum: bool = True, warmup_steps: int = 0,
                 comm=None):
        super().__init__(comm)
        if int(block) < 1:
            raise ValueError(f"distributed.bmuf.block must be >= 1, got {block}")
        self.block, self.zeta = int(block), float(zeta)
        self.eta = 1.0 - 1.0 / self.world if eta is None else float(eta)
        self.nesterov, self.reset = bool(nesterov), bool(reset_momentum)
        self.warmup = int(warmup_steps)
        self.base = self.delta = None
        self.last_sync = 0

    def _start(self, params) -> None:
        dev = params[0].device
        if self.base is None:                                  # fresh: the broadcast weights
            self.base = flat_data(params)
            self.delta = torch.zeros_like(self.base)
        self.base, self.delta = self.base.to(dev), self.delta.to(dev)

    def after_step(self, model, optimizer, step: int) -> None:
        self._tick(step)
        params = flat_params(model)
        if step <= self.warmup:
            self._average(params)
        elif (step - self.warmup) % self.block == 0:
            self._block_sync(params, optimizer)

    @contextlib.contextmanager
    def global_weights(self, model):
        if self.base is None:                      # no update yet: the replicas are the start point
            yield model
            return
        params = flat_params(model)
        local = flat_data(params)
        set_flat_data(params, self.global_model().to(local.device))
        try:
            yield model
        finally:
            set_flat_data(params, local)

    def _mean_model(self, params) -> torch.Tensor:
        w = flat_data(params)
        self.comm.all_reduce_(w)
        self.syncs, self.last_sync = self.syncs + 1, self.steps
        return w.div_(self.world)

    @torch.no_grad()
    def _average(self, params) -> None:
        self.base = self._mean_model(params)
        set_flat_data(params, self.base)

    @torch.no_grad()
    def _block_sync(self, params, optimizer) -> None:
        gbar = self.base - self._mean_model(params)
        self.delta.mul_(self.eta).add_(gbar, alpha=self.zeta)
        w = self.base.sub_(self.delta)                            # W = W~ - v (in place)
        self.base = w.sub_(self.delta, alpha=self.eta) if self.nesterov else w
        set_flat_data(params, self.base)
        if self.reset:
            self._reset_momentum(optimizer)

    def global_model(self) -> torch.Tensor:
        """W, the filtered global model (W~ + eta v under Nesterov, W~ itself under CBM)."""
        return self.base + self.eta * self.delta if self.nesterov else self.base.clone()

    def _reset_momentum(self, optimizer) -> None:
        for state in optimizer.state.values():
            for key in ("momentum_buffer", "exp_avg"):
                if torch.is_tensor(state.get(key)):
                    state[key].zero_()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "base": self.base, "delta": self.delta,
                "last_sync": self.last_sync}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.base, self.delta, self.last_sync = state["base"], state["delta"], state["last_sync"]

    def stats(self) -> dict:
        return {**super().stats(), "block": self.block, "eta": self.eta, "zeta": self.zeta,
                "nesterov": self.nesterov, "reset_momentum": self.reset,
                "warmup_steps": self.warmup}
