"""The networks' low-frame-rate tree: Kaldi chain's ``steps/nnet3/chain/build_tree.sh
--frame-subsampling-factor 3`` on this project's tree code.

The networks emit one row per 30 ms frame. Decoded through the GMM's 10 ms graph, each row is
repeated onto three frames and searched through 3-state phones: three times the frames, more
states. As Kaldi's chain recipes (and Pundak & Sainath's low-frame-rate models) do, the networks
get a tree and graph of their own instead: a one-state topology (``lang.lfr_topo_text``: a phone
lasts >= one 30 ms frame), a tree built on the GMM's alignments subsampled to 30 ms, and an HCLG
in which each network row is one frame. The GMM keeps its 10 ms tree and graph.

* :func:`subsampled_lengths`: ``ComputeNewPhoneLengths`` of Kaldi's ``ConvertAlignment``: phone
  lengths at the low rate (LFR frame t is the 10 ms frame ``t * factor + centre``, the frame whose
  label stage 3 gives it); a phone that would get no frame borrows one from the nearest phone
  that can spare it.
* :func:`phone_alignment`: the transition-ids of (phones, lengths) in a one-state topology under a
  tree, reordered as Kaldi writes alignments (the forward transition first, then self-loops).
* :func:`build_lfr_tree`: acc-tree-stats on the subsampled frames, cluster-phones + build-tree,
  gmm-init-model, and the transition probabilities estimated on the 30 ms alignments.
* :func:`convert_ali`: convert-ali from a 10 ms alignment of any system to the LFR tree, still at
  10 ms: stage 3 brings it to 30 ms by its window-centre rule and keeps the labels of the three
  10 ms frames each row stacks (window targets, frame-shift augmentation).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from millionhours.toolchain import khg
from millionhours import gmm as gmmmod
from millionhours import tree as T
from millionhours.tree import _states_for_window, _tid_table, split_to_phones

__all__ = ["LfrTree", "subsampled_lengths", "phone_lengths", "phone_alignment",
           "build_lfr_tree", "convert_ali"]


def subsampled_lengths(lengths, factor: int = 3, centre: int = 1,
                       min_length: int = 1) -> np.ndarray | None:
    """Per-phone lengths at 1/``factor`` the frame rate, or None if no repair exists.

    A phone keeps the LFR frames whose label frame ``t * factor + centre`` it covers (Kaldi's
    ``conversion_shift`` is ``factor - 1 - centre``). A phone left with fewer than
    ``min_length`` frames takes one from the nearest phone (left or right, by the frames in
    between) that has more than its minimum, as ``ComputeNewPhoneLengths`` does.
    """
    lengths = np.asarray(lengths, np.int64)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    new = np.diff((bounds + factor - 1 - centre) // factor)
    while True:
        short = np.flatnonzero(new < min_length)
        if len(short) == 0:
            return new
        i = int(short[0])
        best, best_dist = -1, None
        for step in (-1, 1):                 # the left side wins a tie, as in Kaldi
            dist, j = 0, i + step
            while 0 <= j < len(new):
                if new[j] > min_length:
                    if best_dist is None or dist < best_dist:
                        best, best_dist = j, dist
                    break
                dist += int(new[j])
                j += step
        if best < 0:
            return None
        new[i] += 1
        new[best] -= 1


def phone_lengths(tm, ali) -> tuple[np.ndarray, np.ndarray]:
    """(phone ids, lengths in frames) of a reordered alignment (``ali-to-phones --write-lengths``)."""
    table = _tid_table(tm)
    ali = np.asarray(ali, np.int64)
    starts, ends = split_to_phones(tm, ali, table)
    return table.phone[ali[starts]], ends - starts + 1


@dataclass
class _Tids:
    """Per-model lookup for :func:`phone_alignment`: window -> transition state -> tids."""
    tm: object
    ctx: object
    table: object = None
    states: dict = field(default_factory=dict)

    def __post_init__(self):
        self.table = _tid_table(self.tm)
        topo = self.tm.topo
        for p in topo.phones:
            entry = topo.topology_for_phone(p)
            emitting = [s for s in entry if s.forward_pdf_class >= 0]
            if len(emitting) != 1:
                raise ValueError(f"phone {p} has {len(emitting)} emitting states; the LFR tree "
                                 f"needs the one-state topology (bin/make_lfr_lang)")

    def fwd_loop(self, window: tuple, phone: int) -> tuple[int, int]:
        if window not in self.states:
            ts = int(_states_for_window(window, phone, self.tm.topo.topology_for_phone(phone),
                                        self.ctx, self.table.tuple_to_state)[0])
            tids = np.arange(self.table.state2id[ts], self.table.state2id[ts + 1])
            loop = tids[self.table.is_self_loop[tids]]
            fwd = tids[~self.table.is_self_loop[tids]]
            if len(loop) != 1 or len(fwd) != 1:
                raise ValueError(f"phone {phone}: the one-state topology needs exactly one "
                                 f"self-loop and one forward transition")
            self.states[window] = (int(fwd[0]), int(loop[0]))
        return self.states[window]


_LOOKUPS: dict = {}


def _lookup(tm, ctx) -> _Tids:
    key = (id(tm), id(ctx))
    hit = _LOOKUPS.get(key)
    if hit is None or hit.tm is not tm or hit.ctx is not ctx:
        if len(_LOOKUPS) >= 8:
            _LOOKUPS.pop(next(iter(_LOOKUPS)))
        hit = _LOOKUPS[key] = _Tids(tm, ctx)
    return hit


def phone_alignment(tm, ctx, phones, lengths) -> np.ndarray:
    """int32 transition-ids of a one-state-topology alignment: each phone's context window
    (0 beyond the utterance) picks its transition state under ``ctx``; its first frame takes the
    forward transition and the rest the self-loop (Kaldi's reordered order)."""
    look = _lookup(tm, ctx)
    n_ctx, central = ctx.context_width, ctx.central_position
    phones = [int(p) for p in phones]
    pad = [0] * central + phones + [0] * (n_ctx - 1 - central)
    out = np.empty(int(np.sum(lengths)), np.int32)
    pos = 0
    for i, (p, n) in enumerate(zip(phones, lengths)):
        fwd, loop = look.fwd_loop(tuple(pad[i:i + n_ctx]), p)
        out[pos] = fwd
        out[pos + 1:pos + n] = loop
        pos += int(n)
    return out


def convert_ali(old_tm, new_tm, new_ctx, ali) -> np.ndarray:
    """convert-ali to the one-state LFR tree at the same (10 ms) frame rate: the phone sequence
    and lengths of ``ali`` are kept, the transition-ids are the new tree's."""
    return phone_alignment(new_tm, new_ctx, *phone_lengths(old_tm, ali))


@dataclass
class LfrTree:
    ctx_dep: object              # khg.ContextDependency of the LFR tree
    tm: object                   # khg.TransitionModel, transitions estimated at 30 ms
    am: object                   # single-Gaussian pdfs (gmm-init-model), kept for final.mdl
    tree: T.Tree
    alis: dict                   # utt -> 10 ms alignment in the LFR tree (stage 3's input)
    info: dict


def build_lfr_tree(old_tm, alis: dict, feats: dict, lang, topo, roots, p: dict,
                   factor: int = 3, centre: int = 1, seed: int = 0) -> LfrTree:
    """The LFR tree from ``old_tm``'s 10 ms alignments and the features they align (GMM
    features, 10 ms): ``steps/nnet3/chain/build_tree.sh --frame-subsampling-factor``.

    ``topo`` is the one-state khg.HmmTopology; ``p`` has num_leaves, thresh, cluster_thresh.
    Tree statistics use only the subsampled frames (each LFR frame's label frame), so counts and
    the split threshold mean what they mean at 30 ms.
    """
    mono_ctx = khg.monophone_context_dependency(
        phones=topo.phones, phone2num_pdf_classes=topo.get_phone_to_num_pdf_classes())
    mono_tm = khg.TransitionModel(ctx_dep=mono_ctx, hmm_topo=topo)
    segs, lfr, failed = {}, {}, []
    for u, a in alis.items():
        segs[u] = phone_lengths(old_tm, a)
        new = subsampled_lengths(segs[u][1], factor, centre)
        if new is None:
            failed.append(u)
        else:
            lfr[u] = new
    utts = [u for u in lfr if u in feats]

    def sub(u):
        idx = np.arange(int(lfr[u].sum())) * factor + centre
        return feats[u][np.minimum(idx, len(feats[u]) - 1)]

    stats = T.acc_tree_stats(mono_tm, (sub(u) for u in utts),
                             (phone_alignment(mono_tm, mono_ctx, segs[u][0], lfr[u]) for u in utts),
                             ci_phones=lang.silence_ids)
    tree, nq = gmmmod.tree_from_stats(stats, lang, roots, topo.get_phone_to_num_pdf_classes(),
                                      p, seed)
    ctx = T.to_context_dependency(tree)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no stats for pdf.*")  # e.g. unused spn
        tm, am = T.init_model_from_stats(tree, stats, ctx, topo)
    counts = np.zeros(tm.num_transition_ids + 1, np.float64)
    for u in utts:
        counts += np.bincount(phone_alignment(tm, ctx, segs[u][0], lfr[u]),
                              minlength=len(counts))
    tm.mle_update(counts, khg.MleTransitionUpdateConfig())
    ali10 = {u: phone_alignment(tm, ctx, *segs[u]) for u in alis}
    lfr_frames = int(sum(int(lfr[u].sum()) for u in utts))
    borrowed = int(sum(int(np.sum(lfr[u] != np.diff((np.concatenate([[0], np.cumsum(segs[u][1])])
                                                     + factor - 1 - centre) // factor)))
                       for u in utts))
    info = {"pdfs": int(tree.num_pdfs), "leaves_before_merge": int(tree.num_leaves_before_cluster),
            "questions": nq, "utterances": len(utts), "lfr_frames": lfr_frames,
            "phones_repaired": borrowed, "unconvertible": sorted(failed),
            "frame_subsampling_factor": factor}
    return LfrTree(ctx, tm, am, tree, ali10, info)
