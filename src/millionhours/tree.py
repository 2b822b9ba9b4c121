"""Phonetic decision tree: the tree-building half of Kaldi that kaldi-hmm-gmm does not bind.

Each piece mirrors one Kaldi program or function (read from kaldi-asr/kaldi; this is our own
numpy code, not a translation):

=========================  ===============================================================
``acc_tree_stats``         acc-tree-stats / ``AccumulateTreeStats`` (src/hmm/tree-accu.cc)
``split_to_phones``        ``SplitToPhones`` (src/hmm/hmm-utils.cc), reordered alignments
``auto_questions``         cluster-phones / ``AutomaticallyObtainQuestions`` (src/tree/build-tree.cc)
``build_tree``             build-tree / ``BuildTree`` + ``GetStubMap``, ``SplitDecisionTree``,
                           ``FindBestSplitForKey``, ``ClusterEventMapRestrictedByMap``,
                           ``RenumberEventMap`` (src/tree/build-tree*.cc)
``gauss_objf``             ``GaussClusterable::Objf`` (src/tree/clusterable-classes.cc)
``Tree.to_kaldi_bytes``    ``ContextDependency::Write`` + ``TableEventMap`` / ``SplitEventMap`` /
                           ``ConstantEventMap::Write`` (src/tree/event-map.cc), binary mode
``to_context_dependency``  ``ContextDependency::Read`` (loaded into a real khg object)
``init_model_from_stats``  gmm-init-model / ``InitAmGmm`` (src/gmmbin/gmm-init-model.cc)
``convert_ali``            convert-ali / ``ConvertAlignment`` (src/hmm/hmm-utils.cc)
=========================  ===============================================================

Stats format (what ``acc_tree_stats`` returns and the builders take): a dict mapping the event
``(phone_0, ..., phone_{N-1}, pdf_class)`` to ``(count, sum_x, sum_x2)``. A context position that
Kaldi leaves out of the event (the non-central positions of a ``--ci-phones`` phone) holds -1,
and the tree never asks about a key that is -1 for any event at a node (as Kaldi's
``PossibleValues`` check does). Phone 0 means "outside the utterance".
"""
from __future__ import annotations

import heapq
import struct
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from millionhours.toolchain import khg

PDF_CLASS_KEY = -1          # Kaldi's kPdfClass event key
DEFAULT_VAR_FLOOR = 0.01    # acc-tree-stats --var-floor and gmm-init-model --var-floor
_LOG_2PI = float(np.log(2.0 * np.pi))

__all__ = [
    "PDF_CLASS_KEY", "Root", "Tree", "acc_tree_stats", "auto_questions", "build_tree",
    "convert_ali", "gauss_objf", "init_model_from_stats", "read_roots", "split_to_phones",
    "stats_to_arrays", "to_context_dependency",
]


# ----------------------------------------------------------------------------------------------
# Gaussian objective (GaussClusterable)
# ----------------------------------------------------------------------------------------------

def gauss_objf(s: np.ndarray, var_floor: float = DEFAULT_VAR_FLOOR) -> np.ndarray:
    """Mirror of ``GaussClusterable::Objf`` for stats rows ``[count, sum_x(D), sum_x2(D)]``.

    Log-likelihood of the data under its own ML diagonal Gaussian with variances floored at
    ``var_floor``: ``-0.5 * count * sum_d(log(2 pi v_d) + raw_var_d / v_d)``, ``v = max(raw_var,
    floor)``; 0 for an empty cluster. This is the form kaldi-hmm-gmm's GaussClusterable computes
    (checked in the tests); older Kaldi drops the ``raw_var / v`` term, which is a per-frame
    constant (1) except in floored dimensions. Works on any leading shape ``(..., 1 + 2D)``.
    """
    s = np.asarray(s, dtype=np.float64)
    dim = (s.shape[-1] - 1) // 2
    count = s[..., 0]
    safe = np.where(count > 0, count, 1.0)[..., None]
    mean = s[..., 1:1 + dim] / safe
    raw = s[..., 1 + dim:] / safe - mean * mean
    var = np.maximum(raw, var_floor)
    obj = -0.5 * count * (np.log(var).sum(-1) + dim * _LOG_2PI + (raw / var).sum(-1))
    return np.where(count > 0, obj, 0.0)


# ----------------------------------------------------------------------------------------------
# Transition-model tables and SplitToPhones
# ----------------------------------------------------------------------------------------------

@dataclass
class _TidTable:
    """Per-transition-id facts of a khg.TransitionModel, as arrays indexed by transition-id."""
    phone: np.ndarray
    hmm_state: np.ndarray
    pdf_class: np.ndarray
    tstate: np.ndarray
    trans_index: np.ndarray
    is_final: np.ndarray
    is_self_loop: np.ndarray
    tuples: list            # tstate-1 -> (phone, hmm_state, forward_pdf, self_loop_pdf)
    state2id: np.ndarray
    tuple_to_state: dict    # TupleToTransitionState


_TABLES: dict = {}          # id(tm) -> (tm, table); holding tm keeps the id from being reused


def _tid_table(tm) -> _TidTable:
    """Cached :func:`_build_tid_table` (a TransitionModel's structure never changes)."""
    hit = _TABLES.get(id(tm))
    if hit is not None and hit[0] is tm:
        return hit[1]
    if len(_TABLES) >= 8:
        _TABLES.pop(next(iter(_TABLES)))
    table = _build_tid_table(tm)
    _TABLES[id(tm)] = (tm, table)
    return table


def _build_tid_table(tm) -> _TidTable:
    """Tables that Kaldi gets from TransitionIdToPhone / ToPdfClass / ToTransitionIndex etc."""
    n = tm.num_transition_ids + 1            # index 0 unused, as in Kaldi
    topo = tm.topo
    tuples = [t.__getstate__() for t in tm.tuples]
    state2id = np.asarray(tm.state2id, dtype=np.int64)
    id2state = np.asarray(tm.id2state, dtype=np.int64)
    t = _TidTable(*(np.zeros(n, np.int64) for _ in range(5)),
                  np.zeros(n, bool), np.zeros(n, bool), tuples, state2id,
                  {tuple(tp): i + 1 for i, tp in enumerate(tuples)})
    entries = {}
    for tid in range(1, n):
        ts = int(id2state[tid])
        phone, hmm_state = tuples[ts - 1][:2]
        if phone not in entries:
            entries[phone] = topo.topology_for_phone(phone)
        entry = entries[phone]
        loop = bool(tm.is_self_loop(tid))
        t.phone[tid], t.hmm_state[tid], t.tstate[tid] = phone, hmm_state, ts
        t.trans_index[tid] = tid - state2id[ts]
        t.is_final[tid], t.is_self_loop[tid] = bool(tm.is_final(tid)), loop
        st = entry[hmm_state]
        t.pdf_class[tid] = st.self_loop_pdf_class if loop else st.forward_pdf_class
    return t


def split_to_phones(tm, ali, _table: _TidTable | None = None):
    """Mirror of Kaldi ``SplitToPhones`` for reordered alignments; returns (starts, ends).

    A phone ends at its ``is_final`` transition-id plus any self-loops of the same transition
    state that follow it (reordering moved them there). ``ends`` are inclusive frame indices.
    Raises ValueError for an alignment that does not split cleanly (Kaldi warns and skips it).
    """
    t = _table or _tid_table(tm)
    ali = np.asarray(ali, dtype=np.int64)
    n = len(ali)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ts = t.tstate[ali]
    cont = np.zeros(n, bool)                # frame continues the self-loop run of frame - 1
    cont[1:] = t.is_self_loop[ali[1:]] & (ts[1:] == ts[:-1])
    # nxt[i] = first index >= i that does not continue a run (n if none).
    nxt = np.where(~cont, np.arange(n), n)
    nxt = np.minimum.accumulate(nxt[::-1])[::-1]
    finals = np.flatnonzero(t.is_final[ali])
    nxt_after = np.append(nxt, n)[finals + 1]
    ends = np.unique(nxt_after - 1)         # a final inside a run is absorbed by the run
    if len(ends) == 0 or ends[-1] != n - 1:
        raise ValueError("alignment does not end at a final transition")
    starts = np.concatenate([[0], ends[:-1] + 1])
    ph = t.phone[ali]
    seg = np.repeat(np.arange(len(starts)), ends - starts + 1)
    if np.any(ph != ph[starts][seg]):
        raise ValueError("alignment has a phone change inside a phone segment")
    return starts, ends


# ----------------------------------------------------------------------------------------------
# acc-tree-stats
# ----------------------------------------------------------------------------------------------

def _utt_events(t: _TidTable, ali, n_ctx: int, central: int, is_ci: np.ndarray):
    """Per-frame event rows (n_frames, N+1) for one utterance, as AccumulateTreeStats builds."""
    starts, ends = split_to_phones(None, ali, t)
    seq = t.phone[ali[starts]]
    nph = len(seq)
    pad = np.concatenate([np.zeros(central, np.int64), seq,
                          np.zeros(n_ctx - 1 - central, np.int64)])   # 0 = out of window
    ctx = np.stack([pad[j:j + nph] for j in range(n_ctx)], axis=1)
    ci = is_ci[seq]
    others = [j for j in range(n_ctx) if j != central]
    ctx[np.ix_(ci, others)] = -1            # key omitted for CI phones (Kaldi: not in event)
    per_frame = np.repeat(ctx, ends - starts + 1, axis=0)
    return np.column_stack([per_frame, t.pdf_class[ali]])


def _group_sum(group: np.ndarray, rows: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum ``rows`` by ``group`` id with one sparse product (much faster than np.add.at)."""
    a = sp.csr_matrix((np.ones(len(group)), (group, np.arange(len(group)))),
                      shape=(n_groups, len(group)))
    return np.asarray(a @ rows)


class _EventAccumulator:
    """Running sums of ``[1, x, x^2]`` per event, reduced every ``chunk`` frames.

    Events are packed into one int64 code (base ``base`` digits of value + 1, so -1 fits)
    so that grouping is a 1-D ``np.unique`` instead of a row-wise one.
    """

    def __init__(self, width: int, base: int, chunk: int):
        self.width, self.base, self.chunk = width, base, chunk
        self.codes, self.sums = np.zeros(0, np.int64), None
        self.buf_codes, self.buf_x, self.nbuf = [], [], 0

    def add(self, ev: np.ndarray, x: np.ndarray) -> None:
        self.buf_codes.append((ev + 1) @ (self.base ** np.arange(self.width, dtype=np.int64)))
        self.buf_x.append(x)
        self.nbuf += len(ev)
        if self.nbuf >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.buf_codes:
            return
        n, dim = self.nbuf, self.buf_x[0].shape[1]
        rows = np.empty((n, 1 + 2 * dim))            # [1, x, x^2] filled in place
        rows[:, 0] = 1.0
        np.concatenate(self.buf_x, out=rows[:, 1:1 + dim], casting="same_kind")
        np.square(rows[:, 1:1 + dim], out=rows[:, 1 + dim:])
        codes = np.concatenate(self.buf_codes)
        if self.sums is not None:                  # merge with what is already summed
            codes, rows = np.concatenate([self.codes, codes]), np.concatenate([self.sums, rows])
        self.codes, inv = np.unique(codes, return_inverse=True)
        self.sums = _group_sum(inv.ravel(), rows, len(self.codes))
        self.buf_codes, self.buf_x, self.nbuf = [], [], 0

    def to_dict(self) -> dict:
        self.flush()
        if self.sums is None:
            return {}
        ev = (self.codes[:, None] // self.base ** np.arange(self.width, dtype=np.int64)) \
            % self.base - 1
        dim = (self.sums.shape[1] - 1) // 2
        return {tuple(e): (float(r[0]), r[1:1 + dim].copy(), r[1 + dim:].copy())
                for e, r in zip(ev.tolist(), self.sums)}


def acc_tree_stats(tm, feats_iter: Iterable, ali_iter: Iterable, context_width: int = 3,
                   central_position: int = 1, silence_phones: Sequence[int] = (),
                   ci_phones: Sequence[int] = (), chunk_frames: int = 100_000) -> dict:
    """Mirror of acc-tree-stats (``AccumulateTreeStats``): Gaussian stats per event.

    For every frame, the event is (phones in the N-phone window around its phone, pdf class of
    its transition-id); the window is taken over the phone sequence from ``split_to_phones`` and
    is 0 beyond the utterance. ``ci_phones`` (Kaldi's ``--ci-phones``, the recipe passes the
    context-independent silence phones) get -1 at the non-central positions so the tree can
    never ask about their context; ``silence_phones`` is an alias added to that set.
    Utterances whose alignment does not split into phones are skipped with a warning, as Kaldi.
    Returns {(p_0, ..., p_{N-1}, pdf_class): (count, sum_x, sum_x2)}.
    """
    t = _tid_table(tm)
    is_ci = np.zeros(int(t.phone.max()) + 1, bool)
    is_ci[list(ci_phones) + list(silence_phones)] = True
    acc = _EventAccumulator(context_width + 1, int(max(t.phone.max(), t.pdf_class.max())) + 2,
                            chunk_frames)
    for feats, ali in zip(feats_iter, ali_iter):
        feats, ali = np.asarray(feats), np.asarray(ali, dtype=np.int64)
        if len(feats) != len(ali):
            raise ValueError(f"features have {len(feats)} frames, alignment {len(ali)}")
        try:
            ev = _utt_events(t, ali, context_width, central_position, is_ci)
        except ValueError as err:
            warnings.warn(f"acc_tree_stats: skipping a bad alignment ({err})")
            continue
        acc.add(ev, feats)
    return acc.to_dict()


def stats_to_arrays(stats: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """Dict stats -> (events (E, N+1) int64, stats rows (E, 1+2D) float64), sorted by event."""
    if not stats:
        raise ValueError("empty tree stats")
    keys = sorted(stats)
    ev = np.array(keys, dtype=np.int64)
    rows = np.array([np.concatenate([[stats[k][0]], stats[k][1], stats[k][2]]) for k in keys],
                    dtype=np.float64)
    return ev, rows


# ----------------------------------------------------------------------------------------------
# cluster-phones (AutomaticallyObtainQuestions)
# ----------------------------------------------------------------------------------------------

def _two_means(s: np.ndarray, rng, num_tries: int, num_iters: int, var_floor: float):
    """2-way k-means of Gaussian stats rows (ClusterKMeans with 2 clusters + RefineClusters).

    Each try starts from a random assignment and then moves, one at a time, the point whose
    move to the other cluster gains most, until no move gains. Returns (assignment, gain).
    """
    n = len(s)
    total_obj = gauss_objf(s.sum(0), var_floor)
    best_assign, best_gain = None, -np.inf
    for _ in range(num_tries):
        a = rng.permutation(np.arange(n) % 2)             # both clusters non-empty
        for _ in range(num_iters * n):
            cl = np.stack([s[a == 0].sum(0), s[a == 1].sum(0)])
            sizes = np.bincount(a, minlength=2)
            here, there = cl[a], cl[1 - a]
            delta = (gauss_objf(here - s, var_floor) + gauss_objf(there + s, var_floor)
                     - gauss_objf(here, var_floor) - gauss_objf(there, var_floor))
            delta[sizes[a] <= 1] = -np.inf                 # never empty a cluster
            i = int(np.argmax(delta))
            if not delta[i] > 1e-9:
                break
            a[i] = 1 - a[i]
        gain = gauss_objf(s[a == 0].sum(0), var_floor) + gauss_objf(s[a == 1].sum(0), var_floor) \
            - total_obj
        if gain > best_gain:
            best_assign, best_gain = a.copy(), gain
    return best_assign, best_gain


def auto_questions(stats: Mapping, phones: Sequence, num_iters: int = 20,
                   pdf_classes: Sequence[int] = (1,), central_position: int = 1,
                   num_tries: int = 10, seed: int = 0,
                   var_floor: float = DEFAULT_VAR_FLOOR) -> list[list[int]]:
    """Mirror of cluster-phones (``AutomaticallyObtainQuestions`` + ``TreeCluster``).

    ``phones`` is a list of phones or of phone sets (Kaldi's sets.txt: a set is clustered as
    one point). Stats of the central phone for the listed ``pdf_classes`` (Kaldi's default
    ``--pdf-class-list=1``) are summed per set; the sets are clustered top-down, always
    splitting the cluster whose 2-means split gains most, until every cluster is one set or no
    split gains. Every cluster of that binary tree, and each input set, is a question; the
    result is sorted, without duplicates (``ObtainSetsOfPhones``).
    """
    sets = [sorted([p]) if np.isscalar(p) else sorted(p) for p in phones]
    ev, s = stats_to_arrays(stats)
    keep = np.isin(ev[:, -1], list(pdf_classes))
    ev, s = ev[keep], s[keep]
    per_set = np.zeros((len(sets), s.shape[1]))
    for i, members in enumerate(sets):
        per_set[i] = s[np.isin(ev[:, central_position], members)].sum(0)
    rng = np.random.default_rng(seed)
    clusters = _tree_cluster(per_set, rng, num_tries, num_iters, var_floor)
    out = {tuple(sorted(q for i in c for q in sets[i])) for c in clusters}
    out |= {tuple(m) for m in sets}
    return [list(q) for q in sorted(out)]


def _tree_cluster(points: np.ndarray, rng, num_tries, num_iters, var_floor) -> list[list[int]]:
    """Top-down binary clustering (``TreeCluster``): returns every node as a list of indices."""
    nodes = [list(range(len(points)))]
    heap = []

    def push(members):
        if len(members) > 1:
            a, gain = _two_means(points[members], rng, num_tries, num_iters, var_floor)
            if gain > 0:
                heapq.heappush(heap, (-gain, len(nodes), members, a))

    push(nodes[0])
    while heap:
        _, _, members, a = heapq.heappop(heap)
        for side in (0, 1):
            child = [m for m, x in zip(members, a) if x == side]
            nodes.append(child)
            push(child)
    return nodes


# ----------------------------------------------------------------------------------------------
# The tree (EventMap) and its Kaldi binary form
# ----------------------------------------------------------------------------------------------

class _Node:
    """One EventMap node: 'const' (leaf), 'split' (SplitEventMap) or 'table' (TableEventMap)."""
    __slots__ = ("kind", "key", "yes_set", "yes", "no", "table", "leaf")

    def __init__(self, kind, key=0, yes_set=(), yes=None, no=None, table=None, leaf=-1):
        self.kind, self.key, self.yes_set = kind, key, tuple(yes_set)
        self.yes, self.no, self.table, self.leaf = yes, no, table, leaf

    def children(self):
        if self.kind == "split":
            return [self.yes, self.no]
        if self.kind == "table":
            return [c for c in self.table if c is not None]
        return []


def _leaf_nodes(node: _Node):
    stack = [node]
    while stack:
        n = stack.pop()
        if n.kind == "const":
            yield n
        stack.extend(n.children())


def _tok(s: str) -> bytes:
    return s.encode() + b" "                # binary WriteToken: token then one space


def _i32(v: int) -> bytes:
    return b"\x04" + struct.pack("<i", v)   # binary WriteBasicType<int32>: size byte + LE


def _u32(v: int) -> bytes:
    return b"\xfc" + struct.pack("<I", v)   # unsigned types carry a negated size byte


def _write_node(n: _Node | None, out: list) -> None:
    """EventMap::Write in binary mode (CE / SE / TE / NULL)."""
    if n is None:
        out.append(_tok("NULL"))
    elif n.kind == "const":
        out += [_tok("CE"), _i32(n.leaf)]
    elif n.kind == "split":
        vals = sorted(n.yes_set)            # ConstIntegerSet::Write = WriteIntegerVector
        out += [_tok("SE"), _i32(n.key), b"\x04", struct.pack("<i", len(vals)),
                struct.pack(f"<{len(vals)}i", *vals), _tok("{")]
        _write_node(n.yes, out)
        _write_node(n.no, out)
        out.append(_tok("}"))
    else:
        out += [_tok("TE"), _i32(n.key), _u32(len(n.table)), _tok("(")]
        for c in n.table:
            _write_node(c, out)
        out.append(_tok(")"))


@dataclass
class Tree:
    """A built tree: Kaldi's ``ContextDependency`` (N, P, to_pdf EventMap) in Python.

    ``split_log`` records every split taken while growing (leaf, key, yes_set, gain) and
    ``num_leaves_before_cluster`` the leaf count before leaf merging.
    """
    root: _Node = field(repr=False)
    context_width: int
    central_position: int
    num_pdfs: int
    split_log: list = field(default_factory=list, repr=False)
    num_leaves_before_cluster: int = 0

    def map(self, ctx: Sequence[int], pdf_class: int) -> int:
        """pdf id for a phone window and pdf class (``EventMap::Map``); KeyError if undefined."""
        n = self.root
        while n.kind != "const":
            v = pdf_class if n.key == PDF_CLASS_KEY else ctx[n.key]
            if n.kind == "split":
                n = n.yes if v in n.yes_set else n.no
            else:
                n = n.table[v] if 0 <= v < len(n.table) else None
                if n is None:
                    raise KeyError(f"no pdf for context {tuple(ctx)}, pdf class {pdf_class}")
        return n.leaf

    def map_events(self, ev: np.ndarray) -> np.ndarray:
        """Vectorized ``map`` over event rows (E, N+1) (last column the pdf class); -1 = none."""
        return _map_rows(self.root, np.asarray(ev, dtype=np.int64))

    def to_kaldi_bytes(self) -> bytes:
        """Binary Kaldi ``tree`` file: ``\\0B`` + ContextDependency N P ToPdf ... End."""
        out = [b"\x00B", _tok("ContextDependency"), _i32(self.context_width),
               _i32(self.central_position), _tok("ToPdf")]
        _write_node(self.root, out)
        out.append(_tok("EndContextDependency"))
        return b"".join(out)


def _map_rows(root: _Node, ev: np.ndarray) -> np.ndarray:
    """Send all event rows down the tree at once by recursive partitioning."""
    out = np.full(len(ev), -1, np.int64)
    stack = [(root, np.arange(len(ev)))]
    while stack:
        n, idx = stack.pop()
        if len(idx) == 0:
            continue
        if n.kind == "const":
            out[idx] = n.leaf
            continue
        v = ev[idx, -1 if n.key == PDF_CLASS_KEY else n.key]
        if n.kind == "split":
            yes = np.isin(v, n.yes_set)
            stack += [(n.yes, idx[yes]), (n.no, idx[~yes])]
        else:
            for val, child in enumerate(n.table):
                if child is not None:
                    stack.append((child, idx[v == val]))
    return out


def to_context_dependency(tree: Tree):
    """A real ``khg.ContextDependency`` loaded from ``tree.to_kaldi_bytes()``.

    kaldi-hmm-gmm pickles a ContextDependency as its Kaldi binary form minus the ``\\0B``
    header (as int8 values), so ``__setstate__`` runs Kaldi's own ``ContextDependency::Read``.
    """
    raw = tree.to_kaldi_bytes()
    cd = khg.ContextDependency.__new__(khg.ContextDependency)
    cd.__setstate__((np.frombuffer(raw[2:], np.int8).tolist(),))
    return cd


# ----------------------------------------------------------------------------------------------
# build-tree
# ----------------------------------------------------------------------------------------------

@dataclass
class Root:
    """One line of roots.txt: phones sharing a tree root; ``shared`` = one root for all pdf
    classes (else one per class), ``split`` = the tree may split it."""
    phones: list
    shared: bool = True
    split: bool = True


def read_roots(text: str) -> list[Root]:
    """Parse roots.txt (``ReadRootsFile``): ``shared|not-shared split|not-split phone...``."""
    roots = []
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        if f[0] not in ("shared", "not-shared") or f[1] not in ("split", "not-split"):
            raise ValueError(f"bad roots line: {line!r}")
        roots.append(Root(sorted(int(p) for p in f[2:]), f[0] == "shared", f[1] == "split"))
    return roots


def _as_roots(phone_sets_roots, shared_roots: bool) -> list[Root]:
    roots = []
    for r in phone_sets_roots:
        if isinstance(r, Root):
            roots.append(Root(sorted(r.phones), r.shared, r.split))
        elif np.isscalar(r):
            roots.append(Root([int(r)], shared_roots, True))
        else:
            roots.append(Root(sorted(int(p) for p in r), shared_roots, True))
    seen = [p for r in roots for p in r.phones]
    if len(seen) != len(set(seen)):
        raise ValueError("a phone is in more than one root")
    for r in roots:
        if r.split and not r.shared:
            raise ValueError("Kaldi does not support splitting non-shared roots")
    return roots


def _stub(roots: list[Root], npc: Mapping[int, int], central: int, counter: list) -> _Node:
    """Mirror of ``GetStubMap``: one leaf per root (or per pdf class of a non-shared root)."""
    def leaf():
        counter[0] += 1
        return _Node("const", leaf=counter[0] - 1)

    if len(roots) == 1:
        r = roots[0]
        if r.shared:
            return leaf()
        return _Node("table", key=PDF_CLASS_KEY,
                     table=[leaf() for _ in range(max(npc[p] for p in r.phones))])
    if all(len(r.phones) == 1 for r in roots):      # newer Kaldi: a table on the centre phone
        table = [None] * (max(r.phones[0] for r in roots) + 1)
        for r in roots:
            table[r.phones[0]] = _stub([r], npc, central, counter)
        return _Node("table", key=central, table=table)
    half = len(roots) // 2
    first, second = _stub(roots[:half], npc, central, counter), \
        _stub(roots[half:], npc, central, counter)
    return _Node("split", key=central, yes_set=sorted(p for r in roots[:half] for p in r.phones),
                 yes=first, no=second)


class _Splitter:
    """Greedy splitting (``SplitDecisionTree`` / ``DecisionTreeSplitter``), vectorized per node.

    For a leaf it sums the stats of its events per value of every key in one sparse product,
    then evaluates all questions of all keys at once: ``gain = objf(yes) + objf(no) -
    objf(all)``. Keys are tried in Kaldi's order (-1, 0, ..., N-1) and ties keep the first.
    """

    def __init__(self, ev, x, questions, pdf_questions, n_ctx, var_floor):
        self.ev, self.x, self.n_ctx, self.var_floor = ev, x, n_ctx, var_floor
        # columns in Kaldi key order: pdf class (key -1) first, then positions 0..N-1
        self.cols = [n_ctx] + list(range(n_ctx))
        self.keys = [PDF_CLASS_KEY] + list(range(n_ctx))
        self.nval = int(max(ev.max(initial=0), max((max(q) for q in questions), default=0),
                            max((max(q) for q in pdf_questions), default=0))) + 1
        self.q_phone = self._membership(questions)
        self.q_pdf = self._membership(pdf_questions)
        self.questions, self.pdf_questions = questions, pdf_questions
        # candidate row r of the stacked yes-stats asks question row_question[r] of key row_key[r]
        sizes = [len(pdf_questions)] + [len(questions)] * n_ctx
        self.row_key = np.repeat(np.arange(n_ctx + 1), sizes)
        self.row_question = np.concatenate([np.arange(m) for m in sizes])

    def _membership(self, qs) -> np.ndarray:
        m = np.zeros((len(qs), self.nval))
        for i, q in enumerate(qs):
            m[i, list(q)] = 1.0
        return m

    def best_split(self, idx: np.ndarray):
        """(gain, key, yes_set) of the best question for the events ``idx`` (gain 0: none)."""
        if len(idx) <= 1:
            return 0.0, None, ()
        xs = self.x[idx]
        vals = self.ev[idx][:, self.cols]                         # (n, K)
        defined = (vals >= 0).all(0)                              # PossibleValues check
        n, nk = vals.shape
        rows = (np.where(vals >= 0, vals, 0) + self.nval * np.arange(nk)).ravel()
        a = sp.csc_matrix((np.ones(n * nk), rows, np.arange(0, n * nk + 1, nk)),
                          shape=(nk * self.nval, n))              # event j -> its K values
        per_val = np.asarray(a @ xs).reshape(nk, self.nval, -1)   # (K, V, F) sums per value
        total = xs.sum(0)
        yes = np.concatenate([self.q_pdf @ per_val[0], *(self.q_phone @ per_val[1:])])
        # only questions that really split the node can gain (Kaldi gets 0 for the others)
        ok = defined[self.row_key] & (yes[:, 0] > 0) & (total[0] - yes[:, 0] > 0)
        cand = np.flatnonzero(ok)
        if not len(cand):
            return 0.0, None, ()
        y = yes[cand]
        gains = gauss_objf(y, self.var_floor) + gauss_objf(total - y, self.var_floor) \
            - gauss_objf(total, self.var_floor)
        best = int(np.argmax(gains))                  # first maximum = Kaldi's strict ">"
        if not gains[best] > 0:
            return 0.0, None, ()
        row = int(cand[best])
        k, qi = int(self.row_key[row]), int(self.row_question[row])
        qs = self.pdf_questions if k == 0 else self.questions
        return float(gains[best]), self.keys[k], tuple(sorted(qs[qi]))

    def partition(self, idx, key, yes_set):
        col = self.n_ctx if key == PDF_CLASS_KEY else key
        yes = np.isin(self.ev[idx, col], yes_set)
        return idx[yes], idx[~yes]


def _split_decision_tree(root, ev, x, splitter, thresh, max_leaves, num_leaves):
    """Best-first splitting over all leaves until no gain > thresh or max_leaves is reached.

    As in Kaldi, the yes child keeps the leaf id and the no child gets the next free id.
    Returns (num_leaves, split_log, smallest_gain).
    """
    leaves = {n.leaf: n for n in _leaf_nodes(root)}
    owner = _map_rows(root, ev)
    state, heap = {}, []

    def consider(leaf, idx):
        gain, key, yes_set = splitter.best_split(idx)
        state[leaf] = (idx, key, yes_set, gain)
        heapq.heappush(heap, (-gain, leaf))

    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], sorted(leaves), side="left")
    ends = np.append(bounds[1:], len(order))
    for leaf, b, e in zip(sorted(leaves), bounds, ends):
        consider(leaf, order[b:e])
    log, smallest = [], np.inf
    while heap and -heap[0][0] > thresh and (max_leaves <= 0 or num_leaves < max_leaves):
        neg_gain, leaf = heapq.heappop(heap)
        idx, key, yes_set, gain = state.pop(leaf)
        node = leaves[leaf]
        yes_idx, no_idx = splitter.partition(idx, key, yes_set)
        yes_node, no_node = _Node("const", leaf=leaf), _Node("const", leaf=num_leaves)
        node.kind, node.key, node.yes_set, node.yes, node.no = "split", key, yes_set, \
            yes_node, no_node
        node.leaf = -1
        leaves[leaf], leaves[num_leaves] = yes_node, no_node
        log.append((leaf, key, yes_set, gain))
        smallest = min(smallest, gain)
        consider(leaf, yes_idx)
        consider(num_leaves, no_idx)
        num_leaves += 1
    return num_leaves, log, smallest


def _cluster_bottom_up(s: np.ndarray, thresh: float, var_floor: float) -> np.ndarray:
    """``ClusterBottomUp``: merge the closest pair while its merge cost (``Distance``) is
    <= thresh; returns for each row the index of the row it was merged into (itself if kept)."""
    n = len(s)
    rep = np.arange(n)
    if n < 2:
        return rep
    s = s.copy()
    obj = gauss_objf(s, var_floor)
    dist = np.full((n, n), np.inf)
    for i in range(n - 1):
        dist[i, i + 1:] = obj[i] + obj[i + 1:] - gauss_objf(s[i] + s[i + 1:], var_floor)
    dist = np.minimum(dist, dist.T)
    alive = np.ones(n, bool)
    while True:
        flat = int(np.argmin(dist))
        i, j = divmod(flat, n)
        if not dist[i, j] <= thresh:
            break
        i, j = min(i, j), max(i, j)                 # keep the smaller leaf id
        s[i] += s[j]
        obj[i] = gauss_objf(s[i], var_floor)
        alive[j] = False
        rep[rep == j] = i
        dist[j, :] = dist[:, j] = np.inf
        row = np.where(alive, obj[i] + obj - gauss_objf(s[i] + s, var_floor), np.inf)
        row[i] = np.inf
        dist[i, :] = dist[:, i] = row
    return rep


def _cluster_leaves(root, stub, ev, x, thresh, var_floor) -> dict:
    """``ClusterEventMapRestrictedByMap``: merge leaves only within one stub leaf (root)."""
    leaf = _map_rows(root, ev)
    group = _map_rows(stub, ev)
    mapping = {}
    for g in np.unique(group):
        ids = np.unique(leaf[group == g])
        sel = group == g
        inv = np.searchsorted(ids, leaf[sel])
        rep = _cluster_bottom_up(_group_sum(inv, x[sel], len(ids)), thresh, var_floor)
        mapping.update({int(ids[i]): int(ids[rep[i]]) for i in range(len(ids))})
    return mapping


def _renumber(root: _Node, mapping: Mapping[int, int]) -> int:
    """Apply a leaf mapping, then ``RenumberEventMap``: leaves 0..L-1 in old-id order."""
    nodes = list(_leaf_nodes(root))
    merged = {n.leaf: mapping.get(n.leaf, n.leaf) for n in nodes}
    new_id = {old: i for i, old in enumerate(sorted(set(merged.values())))}
    for n in nodes:
        n.leaf = new_id[merged[n.leaf]]
    return len(new_id)


def _pdf_class_questions(max_classes: int) -> list[list[int]]:
    """compile-questions: questions on the pdf class are [0], [0,1], ..., [0..max-2]."""
    return [list(range(i + 1)) for i in range(max_classes - 1)]


def build_tree(stats: Mapping, phone_sets_roots: Sequence, questions: Sequence[Sequence[int]],
               num_pdf_classes: Mapping[int, int] | Sequence[int], max_leaves: int,
               thresh: float, cluster_thresh: float | None = None, shared_roots: bool = True,
               central_position: int = 1, var_floor: float = DEFAULT_VAR_FLOOR) -> Tree:
    """Mirror of build-tree (``BuildTree``).

    * ``phone_sets_roots``: one entry per root -- a phone, a list of phones (shared by
      ``shared_roots``, splittable), or a :class:`Root` (e.g. from :func:`read_roots`).
    * ``questions``: phone sets asked about at every context position 0..N-1 (incl. the centre);
      pdf-class questions [0], [0,1], ... are added as compile-questions does.
    * ``num_pdf_classes``: phone -> number of pdf classes (dict, or the list from
      ``HmmTopology.get_phone_to_num_pdf_classes()``).
    * Growing: ``GetStubMap`` then best-first splits while the best gain > ``thresh`` and the
      leaf count < ``max_leaves`` (<= 0: no cap). Roots with ``split=False`` are not grown.
    * Merging (``ClusterEventMapRestrictedByMap``): leaves of one root merge while the cheapest
      merge costs <= ``cluster_thresh``. ``None`` (Kaldi's build-tree default -1) means the
      smallest gain of any split taken; 0 disables merging.
    Leaves are renumbered 0..L-1 (``RenumberEventMap``); these are the pdf ids.
    """
    ev, x = stats_to_arrays(stats)
    n_ctx = ev.shape[1] - 1
    if not 0 <= central_position < n_ctx:
        raise ValueError("central_position outside the context window")
    if not (thresh > 0 or max_leaves > 0):
        raise ValueError("need thresh > 0 or max_leaves > 0")
    npc = dict(num_pdf_classes) if isinstance(num_pdf_classes, Mapping) else \
        {p: int(n) for p, n in enumerate(num_pdf_classes) if n > 0}
    roots = _as_roots(phone_sets_roots, shared_roots)
    counter = [0]
    root = _stub(roots, npc, central_position, counter)
    stub = _stub(roots, npc, central_position, [0])          # kept for restricted merging
    unmapped = _map_rows(root, ev) < 0
    if unmapped.any():
        raise ValueError(f"stats for phones not in the roots: "
                         f"{sorted(set(ev[unmapped, central_position].tolist()))}")
    nonsplit = [p for r in roots if not r.split for p in r.phones]
    grow = ~np.isin(ev[:, central_position], nonsplit)
    qs = [sorted(q) for q in questions]
    splitter = _Splitter(ev[grow], x[grow], qs, _pdf_class_questions(max(npc.values())),
                         n_ctx, var_floor)
    num_leaves, log, smallest = _split_decision_tree(root, ev[grow], x[grow], splitter,
                                                     thresh, max_leaves, counter[0])
    if cluster_thresh is None or cluster_thresh < 0:
        cluster_thresh = smallest if np.isfinite(smallest) else 0.0
    mapping = _cluster_leaves(root, stub, ev, x, cluster_thresh, var_floor) \
        if cluster_thresh != 0 else {}
    num_pdfs = _renumber(root, mapping)
    return Tree(root, n_ctx, central_position, num_pdfs, log, num_leaves)


# ----------------------------------------------------------------------------------------------
# gmm-init-model and convert-ali
# ----------------------------------------------------------------------------------------------

def init_model_from_stats(tree: Tree, stats: Mapping, ctx_dep, topo,
                          var_floor: float = DEFAULT_VAR_FLOOR):
    """Mirror of gmm-init-model (``InitAmGmm``): one single-Gaussian pdf per leaf.

    The stats of every event are summed per leaf (``SplitStatsByMap`` + ``SumStats``); the pdf
    gets their mean and variance (floored at ``var_floor``). A leaf without stats gets the
    global mean/variance with a warning, as Kaldi does. Returns (TransitionModel, AmDiagGmm).
    """
    ev, x = stats_to_arrays(stats)
    leaf = tree.map_events(ev)
    if (leaf < 0).any():
        raise ValueError("some stats do not map to a leaf of the tree")
    per_leaf = _group_sum(leaf, x, tree.num_pdfs)
    dim = (x.shape[1] - 1) // 2
    am = khg.AmDiagGmm()
    for pdf in range(tree.num_pdfs):
        s = per_leaf[pdf]
        if s[0] <= 0:
            warnings.warn(f"init_model_from_stats: no stats for pdf {pdf}; using global stats")
            s = per_leaf.sum(0)
        mean = s[1:1 + dim] / s[0]
        var = np.maximum(s[1 + dim:] / s[0] - mean * mean, var_floor)
        g = khg.DiagGmm(nmix=1, dim=dim)
        g.set_weights(np.ones(1, np.float32))
        g.set_means(mean[None].astype(np.float32))
        g.set_invvars((1.0 / var)[None].astype(np.float32))
        g.compute_gconsts()
        am.add_pdf(g)
    return khg.TransitionModel(ctx_dep=ctx_dep, hmm_topo=topo), am


def convert_ali(old_tm, new_tm, new_ctx_dep, ali) -> np.ndarray:
    """Mirror of convert-ali (``ConvertAlignment``) when the topology is unchanged.

    The alignment is split into phones (``split_to_phones``); each phone keeps its frames and
    per-frame HMM state and transition index. Its new pdfs come from ``new_ctx_dep.compute`` on
    the phone window (0 beyond the utterance), giving the new transition state
    (``TupleToTransitionState``) and transition-id (``PairToTransitionId``). Reordered in,
    reordered out.
    """
    old, new = _tid_table(old_tm), _tid_table(new_tm)
    ali = np.asarray(ali, dtype=np.int64)
    starts, ends = split_to_phones(old_tm, ali, old)
    seq = old.phone[ali[starts]]
    n_ctx, central = new_ctx_dep.context_width, new_ctx_dep.central_position
    pad = np.concatenate([np.zeros(central, np.int64), seq,
                          np.zeros(n_ctx - 1 - central, np.int64)])
    topo = new_tm.topo
    cache = {}                               # phone window -> hmm state -> new transition state
    ts_frames = np.empty_like(ali)
    for i, (b, e) in enumerate(zip(starts, ends)):
        window = tuple(int(v) for v in pad[i:i + n_ctx])
        if window not in cache:
            cache[window] = _states_for_window(window, int(seq[i]), topo.topology_for_phone(
                int(seq[i])), new_ctx_dep, new.tuple_to_state)
        ts_frames[b:e + 1] = cache[window][old.hmm_state[ali[b:e + 1]]]
    return new.state2id[ts_frames] + old.trans_index[ali]


def _states_for_window(window, phone, entry, ctx_dep, tuple_to_state) -> np.ndarray:
    """New transition state of each emitting HMM state of ``phone`` in this phone window."""
    out = np.full(len(entry), -1, np.int64)
    for hs, st in enumerate(entry):
        if st.forward_pdf_class < 0:          # the final, non-emitting state
            continue
        pdfs = []
        for cls in (st.forward_pdf_class, st.self_loop_pdf_class):
            ok, pdf = ctx_dep.compute(list(window), cls)
            if not ok:
                raise ValueError(f"new tree has no pdf for window {window}, pdf class {cls}")
            pdfs.append(pdf)
        out[hs] = tuple_to_state[(phone, hs, pdfs[0], pdfs[1])]
    return out
