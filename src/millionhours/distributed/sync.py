"""`sync`: dense synchronous SGD, the accuracy reference.

Every step the gradients of all workers are summed by one all-reduce of a flat fp32 vector and
divided by the number of workers, so the optimizer on every rank sees the same mean gradient and
the replicas stay identical (an all-reduce leaves the same bits on every rank). Equivalent to
DDP's update; DDP would also overlap the all-reduce with the backward pass, which matters on GPUs,
but it wraps the model, and this one hook serves all three algorithms. Bytes per step: 4 x P.
"""
from __future__ import annotations

from millionhours.distributed import Sync, dense_mean_grad, flat_params


class DenseSync(Sync):
    name = "sync"

    def after_backward(self, model) -> None:
        self.prepare(model)
        dense_mean_grad(self.comm, flat_params(model))
        self.syncs += 1
