"""`two_tier`: GTC inside groups of workers, BMUF across the groups (Ladkat et al., Interspeech 2019).

The N workers form N / G groups of G consecutive ranks. Every step, each group runs GTC over its
own members (the `gtc` options: its fired gradient words are all-gathered inside the group, so
the members of a group stay identical replicas); every `block` steps, BMUF averages the models
across the groups and applies block momentum (the `bmuf` options, with eta = 1 - 1/(N / G) by
default). The cross-group all-reduce runs over the workers at the same place in every group
(G such all-reduces in parallel, each over the N / G groups); as the members of a group are
identical, every worker ends a block sync with the same model. Bytes: the GTC words inside the
group every step plus 4 x P per block across groups, per worker.
"""
from __future__ import annotations

from millionhours import distributed as D
from millionhours.distributed import Sync
from millionhours.distributed.bmuf import BMUF
from millionhours.distributed.gtc import GTC


class TwoTier(Sync):
    name = "two_tier"

    def __init__(self, group_size: int = 16, gtc: dict | None = None, bmuf: dict | None = None,
                 comm=None):
        super().__init__(comm)
        self.group_size = int(group_size)
        inner, outer = D.split_comm(self.group_size)
        self.gtc = GTC(**(gtc or {}), comm=inner)
        self.bmuf = BMUF(**(bmuf or {}), comm=outer)

    def _start(self, params) -> None:
        for s in (self.gtc, self.bmuf):      # the world-level prepare made the replicas equal
            s.num_params = self.num_params
            s._start(params)
            s.started = True

    def after_backward(self, model) -> None:
        self.prepare(model)
        self.gtc.after_backward(model)

    def after_step(self, model, optimizer, step: int) -> None:
        self._tick(step)
        self.gtc.after_step(model, optimizer, step)
        merged = self.bmuf.syncs
        self.bmuf.after_step(model, optimizer, step)
        if self.gtc.base is not None and self.bmuf.syncs != merged:   # BMUF moved the weights
            self.gtc.base = D.flat_data(D.flat_params(model))   # GTC's update/momentum step from
        self.syncs = self.gtc.syncs + self.bmuf.syncs

    def global_weights(self, model):
        return self.bmuf.global_weights(model)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "gtc": self.gtc.state_dict(),
                "bmuf": self.bmuf.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.gtc.load_state_dict(state["gtc"])
        self.bmuf.load_state_dict(state["bmuf"])

    def stats(self) -> dict:
        g, b = self.gtc.stats(), self.bmuf.stats()
        total = g["bytes_sent_total"] + b["bytes_sent_total"]
        steps = max(self.steps, 1)
        return {**super().stats(), "group_size": self.group_size,
                "groups": self.world // self.group_size, "syncs": g["syncs"] + b["syncs"],
                "bytes_sent_total": total, "bytes_per_step": total / steps,
                "ratio_to_dense": total / steps / max(self.dense_bytes_per_step(), 1),
                "wire_bytes_per_step_est": g["wire_bytes_per_step_est"]
                + b["wire_bytes_per_step_est"], "gtc": g, "bmuf": b}
