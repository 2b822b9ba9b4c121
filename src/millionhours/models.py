"""Acoustic models: the paper's LSTM stacks over 30 ms LFR frames, one softmax over senones.

Teacher: 5-layer bidirectional LSTM (5 x 832 cells per direction, 78.3M parameters at 3,000
senones); it needs the whole utterance. Student: 5-layer unidirectional LSTM (5 x 768, 24.2M),
which streams. Both are `AcousticModel` with a different `ModelConfig`; nn.LSTM keeps the cuDNN
kernels on a GPU. (nn.LSTM carries two bias vectors per gate, b_ih and b_hh; the paper-size counts
include both, a 0.04% difference from the single-bias arithmetic in the research notes.)
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

from millionhours.features import dct_matrix


@dataclass(frozen=True)
class ModelConfig:
    num_senones: int
    input_dim: int = 192          # 3 stacked 64-dim fbank frames (LFR)
    layers: int = 5
    cells: int = 256              # per direction
    bidirectional: bool = True
    dropout: float = 0.0          # between LSTM layers
    input_ceps: int = 0           # > 0: each stacked fbank frame -> its first N cepstra (a fixed DCT)
    input_block: int = 64         # fbank bins per stacked frame (the DCT's input)
    subframes: int = 1            # > 1: one softmax per 10 ms frame of each LFR row (the stack)

    @classmethod
    def from_params(cls, p: dict, num_senones: int, input_dim: int = 192) -> "ModelConfig":
        """The `model:` block of params[role]; num_senones comes from the targets."""
        keys = ("layers", "cells", "bidirectional", "dropout", "input_ceps", "subframes")
        return cls(num_senones=int(num_senones), input_dim=int(input_dim),
                   **{k: type(getattr(cls, k))(p[k]) for k in keys if k in p})


class AcousticModel(nn.Module):
    """LSTM stack + linear output: (B, T, input_dim) LFR features -> (B, T, num_senones) logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        lstm_in = cfg.input_dim
        if cfg.input_ceps:
            # cepstral truncation keeps the spectral envelope and drops the F0 harmonics that a
            # 64-bin fbank resolves (what the GMM's 13 MFCCs do); not a parameter, not saved
            if cfg.input_dim % cfg.input_block or not 0 < cfg.input_ceps <= cfg.input_block:
                raise ValueError(f"input_ceps {cfg.input_ceps}: needs blocks of {cfg.input_block} "
                                 f"bins in {cfg.input_dim} input dims and at most that many ceps")
            dct = torch.from_numpy(dct_matrix(cfg.input_ceps, cfg.input_block)).float()
            self.register_buffer("dct", dct, persistent=False)
            lstm_in = cfg.input_dim // cfg.input_block * cfg.input_ceps
        self.lstm = nn.LSTM(lstm_in, cfg.cells, cfg.layers, batch_first=True,
                            bidirectional=cfg.bidirectional, dropout=cfg.dropout)
        # subframes k: the LSTMs still run at the low frame rate; only the output layer emits a
        # row of logits for each of the k 10 ms frames a 30 ms row stacks
        self.output = nn.Linear(cfg.cells * (2 if cfg.bidirectional else 1),
                                cfg.num_senones * cfg.subframes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at every position; positions past `lengths` are garbage, mask them in the loss.

        A unidirectional LSTM never looks ahead, so trailing padding cannot change the valid
        frames and the padded tensor goes straight to the kernel. The backward direction of a
        BLSTM would start inside the padding, so each layer runs it on sequences reversed within
        their own lengths (`_blstm_by_reversal`): exact, and faster than packed sequences
        (measured 3x on CPU, 1.3x on an H200 with cuDNN for the 5x832 teacher).
        """
        if self.cfg.input_ceps:
            b, t = x.shape[:2]
            x = (x.view(b, t, -1, self.cfg.input_block) @ self.dct.T).reshape(b, t, -1)
        # lengths may stay on the host (the loops pass the pinned host copy): deciding on the
        # path from device lengths would block the host until the device queue is empty
        if self.cfg.bidirectional and lengths is not None and int(lengths.min()) < x.shape[1]:
            h = self._blstm_by_reversal(x, lengths.to(x.device, non_blocking=True))
        else:
            h, _ = self.lstm(x)
        out = self.output(h)
        if self.cfg.subframes > 1:                        # (B, T, k, S), k in time order
            return out.view(*out.shape[:2], self.cfg.subframes, self.cfg.num_senones)
        return out

    def _blstm_by_reversal(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The same BLSTM (same parameters) layer by layer, exact for right-padded batches.

        On an H200 this runs at 74-87% of the fused kernel (bench/bench_blstm.py; running the
        two directions on two CUDA streams measured no faster), so GPU profiles plan unpadded
        batches (data.plan_batches uniform=True), which take the fused path.
        """
        b, t = x.shape[:2]
        rev = _reversal_index(lengths, t)
        flip = lambda y: _Reverse.apply(y.reshape(b * t, y.shape[2]), rev).view(b, t, -1)
        zeros = x.new_zeros(1, b, self.cfg.cells)
        h = x
        for layer in range(self.cfg.layers):
            yf = self._direction(h, zeros, layer, "")
            yb = flip(self._direction(flip(h), zeros, layer, "_reverse"))
            h = torch.cat([yf, yb], dim=2)
            if self.cfg.dropout and layer < self.cfg.layers - 1:
                h = nn.functional.dropout(h, self.cfg.dropout, self.training)
        return h

    def _direction(self, inp: torch.Tensor, zeros: torch.Tensor, layer: int, sfx: str):
        """One direction of one layer (nn.LSTM's own parameters), from a zero state."""
        weights = [getattr(self.lstm, f"{n}_l{layer}{sfx}")
                   for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        with warnings.catch_warnings():   # cuDNN: per-layer weights are not one flat buffer
            warnings.filterwarnings("ignore", "RNN module weights are not part")
            return torch.lstm(inp, (zeros, zeros), weights, True, 1, 0.0, self.training,
                              False, True)[0]

    @property
    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self, role: str = "model") -> str:
        """One line, e.g. 'teacher: BLSTM 5x832, 78.3M params'."""
        c = self.cfg
        kind = "BLSTM" if c.bidirectional else "LSTM"
        inp = f"{c.input_dim} in" + (f" as {c.input_dim // c.input_block}x{c.input_ceps} cepstra"
                                     if c.input_ceps else "")
        sub = f" x {c.subframes} sub-frames" if c.subframes > 1 else ""
        return (f"{role}: {kind} {c.layers}x{c.cells}, {self.param_count / 1e6:.1f}M params "
                f"({inp}, {c.num_senones} senones{sub})")


def row_logits(logits: torch.Tensor) -> torch.Tensor:
    """(B, T, S) logits of each LFR row: a sub-frame model's (B, T, k, S) gives its centre
    sub-frame, the 10 ms frame whose label the row's single-target training uses."""
    return logits if logits.dim() == 3 else logits[:, :, logits.shape[2] // 2]


def _reversal_index(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """Flat (B*T,) row index of a (B, T, C) batch viewed as (B*T, C) that reverses each row's
    first lengths[b] steps and keeps its padding in place; computed once per batch."""
    steps = torch.arange(t, device=lengths.device)[None, :]
    n = lengths[:, None]
    within = torch.where(steps < n, n - 1 - steps, steps)
    return (within + t * torch.arange(len(lengths), device=lengths.device)[:, None]).reshape(-1)


class _Reverse(torch.autograd.Function):
    """Rows of (N, C) in the order of a self-inverse permutation (_reversal_index). Its gradient
    is the same row copy; autograd's default for an indexing op is a scatter-add with atomics."""

    @staticmethod
    def forward(ctx, y, index):
        ctx.save_for_backward(index)
        return y.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        index, = ctx.saved_tensors
        return grad.index_select(0, index), None


def build_model(model_params: dict, num_senones: int, input_dim: int = 192) -> AcousticModel:
    """An AcousticModel from a params `model:` block (layers, cells, bidirectional, dropout)."""
    return AcousticModel(ModelConfig.from_params(model_params, num_senones, input_dim))


def save_final(path: str, model: AcousticModel, **extra) -> None:
    """The self-contained model file: weights, config and whatever the caller adds (CMVN, LFR)."""
    from millionhours.fileio import atomic_path
    with atomic_path(path) as tmp:
        torch.save({"model_state": model.state_dict(), "model_config": asdict(model.cfg), **extra}, tmp)


def load_final(path: str, map_location="cpu") -> tuple[AcousticModel, dict]:
    """(model in eval mode, the whole saved dict) from a file written by `save_final`."""
    blob = torch.load(path, map_location=map_location, weights_only=False)
    model = AcousticModel(ModelConfig(**blob["model_config"]))
    model.load_state_dict(blob["model_state"])
    return model.eval(), blob
