"""GMM-HMM training and alignment: Kaldi's steps/train_mono.sh, train_deltas.sh,
train_lda_mllt.sh and align_si.sh.

The GMM system exists only to produce the senone tree and frame alignments that the neural
models are trained on (stage 2). Each function names the Kaldi program it mirrors; the GMM
arithmetic itself is Kaldi's C++ code through kaldi-hmm-gmm, only the loops are ours.

GMM features (Kaldi's ``add-deltas`` over ``apply-cmvn`` over MFCC), computed from the stored
64-dim log-mel fbank instead of from audio, so stage 2 reads only stage 1's output:

* 13 cepstra = DCT-II of the 64 log-mel energies (Kaldi's ``ComputeDctMatrix``), keeping C0
  (Kaldi's ``--use-energy=true`` would replace C0 by the frame log-energy, which fbank does
  not store), with Kaldi's cepstral liftering ``1 + Q/2 sin(pi i / Q)``, ``Q = 22``. Kaldi's MFCC
  uses 23 mel bins; 64 bins give a slightly finer envelope but the same kind of features.
* Per-speaker cepstral mean normalization (``apply-cmvn`` with per-speaker stats and
  ``--norm-vars=false``, Kaldi's default in steps/*; ``cmn: utterance`` and ``norm_vars``
  select per-utterance stats / variance normalization), then deltas and delta-deltas
  (``add-deltas``, window 2, via kaldi_native_fbank), 39 dims.
* LDA+MLLT systems instead splice +-3 frames of the normalized cepstra (``splice-feats``, 91
  dims) and project them with ``final.mat`` (LDA to 40 dims, then MLLT), estimated here in
  numpy (``est-lda``, ``gmm-acc-mllt``/``est-mllt``).

Alignment can boost the optional-silence pdfs (``gmm-boost-silence``, Kaldi recipes: 1.25).

Speed: the E-step groups frames by pdf and scores each group with one
``DiagGmm.log_likelihoods_matrix`` call (batched ``gmm-acc-stats-ali``); alignment
(``gmm-align-compiled``) runs in ``nj`` worker processes that each own a fixed set of speakers,
as Kaldi's ``split_data.sh`` jobs do. Everything is deterministic (fixed seeds, fixed shards).
"""
from __future__ import annotations

import heapq
import multiprocessing as mp
import os
import time
import warnings
import zlib
from dataclasses import dataclass, field

import kaldi_native_fbank as knf
import kaldiio
import numpy as np

from millionhours.toolchain import khg, _khg, kaldifst   # noqa: F401  (import order)
from millionhours import tree as T
from millionhours.features import dct_matrix
from millionhours.lang import Lang

__all__ = [
    "FeatConfig", "dct_matrix", "lifter_coeffs", "mfcc_from_fbank", "add_deltas",
    "gmm_features", "load_gmm_features", "split_by_speaker", "text_to_word_ids", "AlignConfig",
    "Aligner", "Stats", "accumulate", "em_update", "split_targets", "split_gmm", "split_by_count",
    "DEFAULTS", "merged", "align_config",
    "GmmSystem", "init_mono", "train_mono", "build_tri_tree", "train_tri", "train_lda_mllt",
    "boost_silence", "splice_feats", "apply_transform", "acc_lda", "est_lda", "acc_mllt",
    "est_mllt", "mllt_objf", "transform_means", "phone_segments",
    "read_phones_ctm", "boundary_accuracy",
]


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatConfig:
    num_ceps: int = 13
    cepstral_lifter: float = 22.0
    cmn: str = "speaker"           # speaker | utterance | none
    norm_vars: bool = False        # apply-cmvn --norm-vars (variance too, same grouping)
    delta_order: int = 2           # add-deltas order (0: none, as for LDA input)
    delta_window: int = 2          # add-deltas --delta-window
    splice: int = 0                # splice-feats +-N frames after the deltas (LDA input: 3)

    @classmethod
    def from_params(cls, p: dict | None) -> "FeatConfig":
        p = p or {}
        return cls(**{k: p[k] for k in cls.__dataclass_fields__ if k in p})


def lifter_coeffs(num_ceps: int, q: float) -> np.ndarray:
    """Kaldi's ``ComputeLifterCoeffs``: ``1 + 0.5 Q sin(pi i / Q)``."""
    i = np.arange(num_ceps)
    return 1.0 + 0.5 * q * np.sin(np.pi * i / q) if q else np.ones(num_ceps)


def mfcc_from_fbank(fbank: np.ndarray, num_ceps: int = 13, lifter: float = 22.0) -> np.ndarray:
    """MFCC (compute-mfcc-feats without energy) from log-mel fbank: DCT-II + liftering."""
    m = dct_matrix(num_ceps, fbank.shape[1]) * lifter_coeffs(num_ceps, lifter)[:, None]
    return (np.asarray(fbank, np.float64) @ m.T).astype(np.float32)


def add_deltas(feats: np.ndarray, order: int = 2, window: int = 2) -> np.ndarray:
    """Kaldi's ``add-deltas --delta-order=order --delta-window=window``."""
    opts = knf.DeltaOptions()
    opts.order = order
    opts.window = window
    return knf.compute_deltas(opts, np.ascontiguousarray(feats, np.float32))


def splice_feats(feats: np.ndarray, context: int) -> np.ndarray:
    """Kaldi's ``splice-feats --left-context=N --right-context=N``: frames t-N..t+N side by
    side, the first/last frame repeated beyond the edges."""
    n = len(feats)
    idx = np.clip(np.arange(n)[:, None] + np.arange(-context, context + 1)[None, :], 0, n - 1)
    return np.ascontiguousarray(feats[idx].reshape(n, -1))


def gmm_features(fbanks: dict, utt2spk: dict, cfg: FeatConfig = FeatConfig()) -> dict:
    """utt -> GMM features ((T, 39) by default; (T, 91) for the LDA input ``delta_order=0,
    splice=3``) for utterances of whole speakers (for per-speaker CMN)."""
    ceps = {u: mfcc_from_fbank(x, cfg.num_ceps, cfg.cepstral_lifter) for u, x in fbanks.items()}
    if cfg.cmn not in ("speaker", "utterance", "none"):
        raise ValueError(f"gmm.feats.cmn must be speaker, utterance or none, got {cfg.cmn!r}")
    if cfg.cmn != "none":
        key = (lambda u: utt2spk[u]) if cfg.cmn == "speaker" else (lambda u: u)
        sums: dict = {}
        for u, c in ceps.items():
            s = sums.setdefault(key(u), [np.zeros(c.shape[1]), np.zeros(c.shape[1]), 0])
            s[0] += c.sum(0, dtype=np.float64)
            s[1] += (c.astype(np.float64) ** 2).sum(0)
            s[2] += len(c)
        for u in ceps:
            s, s2, n = sums[key(u)]
            mean = s / n
            scale = 1.0 / np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-10)) if cfg.norm_vars else 1.0
            ceps[u] = ((ceps[u] - mean) * scale).astype(np.float32)
    out = {u: add_deltas(c, cfg.delta_order, cfg.delta_window) if cfg.delta_order else c
           for u, c in ceps.items()}
    return {u: splice_feats(c, cfg.splice) for u, c in out.items()} if cfg.splice else out


def load_gmm_features(fbank_dir: str, utts: list, utt2spk: dict,
                      cfg: FeatConfig = FeatConfig()) -> dict:
    """GMM features of ``utts`` read from ``fbank_dir/feats.scp`` (give whole speakers)."""
    scp = kaldiio.load_scp(os.path.join(fbank_dir, "feats.scp"))
    return gmm_features({u: scp[u] for u in utts}, utt2spk, cfg)


def split_by_speaker(utts: list, utt2spk: dict, nj: int) -> list[list]:
    """Kaldi's ``split_data.sh``: ``nj`` shards of whole speakers, near-equal in utterances,
    in utterance order (utterance ids sort with their speakers)."""
    spk_utts: dict = {}
    for u in utts:
        spk_utts.setdefault(utt2spk[u], []).append(u)
    spks = list(spk_utts)
    nj = max(1, min(nj, len(spks)))
    sizes = np.cumsum([len(spk_utts[s]) for s in spks])
    cut = np.searchsorted(sizes, np.arange(1, nj) * sizes[-1] / nj, side="left")
    bounds = [0] + [int(c) + 1 for c in cut] + [len(spks)]
    shards = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            shards.append([u for s in spks[a:b] for u in spk_utts[s]])
    return shards


def text_to_word_ids(text: dict, lang: Lang) -> dict:
    """utt -> word ids (``utils/sym2int.pl --map-oov <unk>``)."""
    oov = lang.words[lang.oov]
    return {u: [lang.words.get(w, oov) for w in t.split()] for u, t in text.items()}


# ----------------------------------------------------------------------------------------------
# Alignment workers (compile-train-graphs, align-equal-compiled, gmm-align-compiled)
# ----------------------------------------------------------------------------------------------

@dataclass
class AlignConfig:
    beam: float = 10.0
    retry_beam: float = 40.0
    transition_scale: float = 1.0
    self_loop_scale: float = 0.1
    acoustic_scale: float = 0.1
    boost_silence: float = 1.0     # gmm-boost-silence factor on the optional-silence pdfs


def boost_silence(tm, am, phones, boost: float):
    """Mirror of ``gmm-boost-silence --boost=B``: a copy of ``am`` whose pdfs of ``phones``
    (the optional silence) have their mixture weights scaled by ``boost`` (not renormalized).

    Alignment then adds log(boost) to every silence frame, which moves the edges of silence
    outwards (steps/train_*.sh and align_si.sh use it with ``--boost-silence 1.25``)."""
    out = khg.AmDiagGmm()
    out.copy_from_am_diag_gmm(am)
    if boost == 1.0:
        return out
    _, pdfs = khg.get_pdfs_for_phones(tm, list(phones))
    for p in pdfs:
        g = out.get_pdf(p)
        g.set_weights(np.asarray(g.weights, np.float32) * np.float32(boost))
        g.compute_gconsts()
    return out


class _Shard:
    """One alignment job: its utterances' features, transcripts and compiled training graphs."""

    def __init__(self, fbank_dir, utts, utt2spk, word_ids, lang_dir, feat_cfg, disambig):
        self.utts = utts
        self.raw = load_gmm_features(fbank_dir, utts, utt2spk, feat_cfg)
        self.feats = self.raw
        self.word_ids = {u: word_ids[u] for u in utts}
        self.lex = kaldifst.StdVectorFst.read(os.path.join(lang_dir, "L.fst"))
        self.disambig = list(disambig)
        self.graphs: dict = {}

    def compile(self, tm, ctx_dep):
        """compile-train-graphs (scales 0: transition probabilities are added at align time)."""
        o = khg.TrainingGraphCompilerOptions()
        o.transition_scale, o.self_loop_scale = 0.0, 0.0
        gc = khg.TrainingGraphCompiler(trans_model=tm, ctx_dep=ctx_dep, lex_fst=self.lex,
                                       disambig_syms=self.disambig, opts=o)
        self.graphs = {u: gc.compile_graph_from_text(self.word_ids[u]) for u in self.utts}
        return len(self.graphs)

    def set_transform(self, mat):
        """transform-feats: features become ``raw @ mat.T`` (None: raw features)."""
        self.feats = self.raw if mat is None else \
            {u: apply_transform(x, mat) for u, x in self.raw.items()}
        return len(self.feats)

    def equal_align(self, seed):
        """align-equal-compiled: a random equal-length path through each graph."""
        out, failed = {}, []
        for u in self.utts:
            rs = (zlib.crc32(u.encode()) + seed) % (2 ** 31)
            ok, path = kaldifst.equal_align(ifst=self.graphs[u], length=len(self.feats[u]),
                                            rand_seed=rs, num_retries=10)
            if ok:
                ok, tids, _, _ = kaldifst.get_linear_symbol_sequence(path)
            if ok and len(tids) == len(self.feats[u]):
                out[u] = np.asarray(tids, np.int32)
            else:
                failed.append(u)
        return out, failed, 0.0, 0, 0

    def align(self, tm, am, cfg: AlignConfig):
        """gmm-align-compiled with Kaldi's retry beam; failed utterances are left out."""
        ac = khg.AlignConfig()
        ac.beam, ac.retry_beam = cfg.beam, cfg.retry_beam
        out, failed, tot_like, frames, retried = {}, [], 0.0, 0, 0
        for u in self.utts:
            fst = self.graphs[u].copy()
            khg.add_transition_probs(trans_model=tm, transition_scale=cfg.transition_scale,
                                     self_loop_scale=cfg.self_loop_scale, fst=fst)
            dec = khg.DecodableAmDiagGmmScaled(am=am, tm=tm, feats=self.feats[u],
                                               scale=cfg.acoustic_scale)
            nd, ne, nr, like, nfr, ali, _ = khg.align_utterance_wrapper(
                config=ac, utt=u, acoustic_scale=cfg.acoustic_scale, fst=fst, decodable=dec,
                num_done=0, num_error=0, num_retried=0, tot_like=0.0, frame_count=0)
            retried += nr
            if nd and len(ali) == len(self.feats[u]):
                out[u] = np.asarray(ali, np.int32)
                tot_like += like
                frames += nfr
            else:
                failed.append(u)
        return out, failed, tot_like, frames, retried


def _worker_main(conn, args):
    """Worker loop: builds its shard, then serves (method, args) requests until None."""
    shard = _Shard(*args)
    conn.send(("ready", len(shard.utts)))
    while True:
        msg = conn.recv()
        if msg is None:
            break
        name, call_args = msg
        try:
            conn.send(("ok", getattr(shard, name)(*call_args)))
        except Exception as e:  # report, keep serving; the parent raises
            conn.send(("error", f"{type(e).__name__}: {e}"))
    conn.close()


class Aligner:
    """``nj`` alignment jobs over fixed speaker shards (Kaldi's JOB=1:nj).

    With ``nj == 1`` the job runs in this process; otherwise each job is a forked process that
    keeps its features and training graphs between calls, so only the model travels per call.
    """

    def __init__(self, fbank_dir, utts, utt2spk, word_ids, lang: Lang, lang_dir,
                 feat_cfg: FeatConfig, nj: int = 2):
        self.shards = split_by_speaker(utts, utt2spk, nj)
        self.sil_phones = [lang.phones[lang.sil_phone]]     # optional_silence.csl
        args = [(fbank_dir, s, utt2spk, word_ids, lang_dir, feat_cfg, lang.disambig_ids)
                for s in self.shards]
        self.local = None
        self.procs, self.conns = [], []
        if len(args) == 1:
            self.local = _Shard(*args[0])
            return
        ctx = mp.get_context("fork")
        for a in args:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(child, a), daemon=True)
            p.start()
            self.procs.append(p)
            self.conns.append(parent)
        for c in self.conns:
            self._recv(c)

    @staticmethod
    def _recv(conn):
        status, value = conn.recv()
        if status == "error":
            raise RuntimeError(f"alignment job failed: {value}")
        return value

    def _call(self, name, *args):
        if self.local is not None:
            return [getattr(self.local, name)(*args)]
        for c in self.conns:
            c.send((name, args))
        return [self._recv(c) for c in self.conns]

    def compile(self, tm, ctx_dep) -> None:
        self._call("compile", tm, ctx_dep)

    def set_transform(self, mat) -> None:
        """Every job's features become ``raw @ mat.T`` (the LDA/MLLT feature transform)."""
        self._call("set_transform", None if mat is None else np.asarray(mat, np.float32))

    def _merge(self, results):
        alis, failed, like, frames, retried = {}, [], 0.0, 0, 0
        for a, f, lk, fr, rt in results:
            alis.update(a)
            failed += f
            like, frames, retried = like + lk, frames + fr, retried + rt
        return alis, {"failed": failed, "retried": retried,
                      "like_per_frame": like / frames if frames else None}

    def equal_align(self, seed: int = 0):
        return self._merge(self._call("equal_align", seed))

    def align(self, tm, am, cfg: AlignConfig):
        if cfg.boost_silence != 1.0:
            am = boost_silence(tm, am, self.sil_phones, cfg.boost_silence)
        return self._merge(self._call("align", tm, am, cfg))

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
        self.procs, self.conns = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------------------------
# EM (gmm-acc-stats-ali + gmm-est), batched
# ----------------------------------------------------------------------------------------------

@dataclass
class Stats:
    """Per-pdf Gaussian stats (occ, sum x, sum x^2 per component) and transition counts."""
    occ: list
    x: list
    x2: list
    trans: np.ndarray
    tot_like: float
    frames: int

    def pdf_occs(self) -> np.ndarray:
        return np.array([o.sum() if o is not None else 0.0 for o in self.occ], np.float32)


def accumulate(tm, am, feats: np.ndarray, ali: np.ndarray) -> Stats:
    """Mirror of ``gmm-acc-stats-ali`` for concatenated frames ``feats`` and tids ``ali``.

    Frames are grouped by pdf; each group is scored by one ``log_likelihoods_matrix`` call and
    the component posteriors give the stats as two matrix products.
    """
    tid2pdf = np.asarray(tm.transition_id_to_pdf_array(), np.int64)
    pdf = tid2pdf[ali]
    n = am.num_pdfs
    order = np.argsort(pdf, kind="stable")
    bounds = np.searchsorted(pdf[order], np.arange(n + 1))
    occ, xs, x2s = [None] * n, [None] * n, [None] * n
    tot = 0.0
    for p in range(n):
        a, b = bounds[p], bounds[p + 1]
        if a == b:
            continue
        x = feats[order[a:b]]
        ll = np.asarray(am.get_pdf(p).log_likelihoods_matrix(x), np.float64)
        mx = ll.max(1, keepdims=True)
        post = np.exp(ll - mx)
        s = post.sum(1, keepdims=True)
        tot += float((mx[:, 0] + np.log(s[:, 0])).sum())
        post /= s
        x64 = x.astype(np.float64)
        occ[p], xs[p], x2s[p] = post.sum(0), post.T @ x64, post.T @ (x64 * x64)
    trans = np.bincount(ali, minlength=tm.num_transition_ids + 1).astype(np.float64)
    return Stats(occ, xs, x2s, trans, tot, len(ali))


def split_targets(occs: np.ndarray, target: int, power: float, min_count: float) -> list[int]:
    """Kaldi's ``GetSplitTargets``: Gaussians per pdf for ``target`` in all, each split given to
    the pdf with the most occ^power per Gaussian, none beyond occ / min_count (ties: lowest pdf)."""
    occs = np.asarray(occs, np.float64)
    heap = [(-(o ** power), p, 1) for p, o in enumerate(occs)]
    heapq.heapify(heap)
    total = len(occs)
    while total < target and heap and heap[0][0] < 0:
        _, p, n = heapq.heappop(heap)
        if (n + 1) * min_count >= occs[p]:
            heapq.heappush(heap, (0.0, p, n))      # min-count reached: never split again
            continue
        total += 1
        heapq.heappush(heap, (-(occs[p] ** power) / (n + 1), p, n + 1))
    out = [1] * len(occs)
    for _, p, n in heap:
        out[p] = n
    return out


def split_gmm(g, target: int, perturb: float, rng: np.random.Generator) -> None:
    """Kaldi's ``DiagGmm::Split``: repeatedly halve the heaviest component into two copies
    moved apart by +-perturb standard deviations along a random direction. Mirrored here with a
    seeded generator: kaldi-hmm-gmm draws these from an unseeded std::random_device, which made
    stage 2 give a different tree on every run."""
    n, dim = np.asarray(g.inv_vars).shape
    w = np.resize(np.asarray(g.weights, np.float32), target)          # np.resize copies
    iv = np.resize(np.asarray(g.inv_vars, np.float32), (target, dim))
    mi = np.resize(np.asarray(g.means_invvars, np.float32), (target, dim))
    for cur in range(n, target):
        k = int(np.argmax(w[:cur]))
        w[k] /= 2
        w[cur] = w[k]
        r = (rng.standard_normal(dim) * np.sqrt(iv[k])).astype(np.float32) * np.float32(perturb)
        iv[cur] = iv[k]
        mi[cur] = mi[k] + r
        mi[k] = mi[k] - r
    g.resize(target, dim)
    g.set_weights(w)
    g.set_invvars_and_means(iv, mi / iv)
    g.compute_gconsts()


def split_by_count(am, occs: np.ndarray, target: int, perturb: float, power: float,
                   min_count: float, seed: int) -> None:
    """Kaldi's ``AmDiagGmm::SplitByCount`` (gmm-est --mix-up) with a reproducible perturbation:
    pdf ``p`` growing from ``n`` Gaussians draws from a generator seeded by (seed, p, n)."""
    for p, t in enumerate(split_targets(occs, target, power, min_count)):
        g = am.get_pdf(p)
        if g.num_gauss < t:
            split_gmm(g, t, perturb, np.random.default_rng([seed, p, g.num_gauss]))


def em_update(tm, am, st: Stats, min_gauss_occ: float, mix_up: int, power: float,
              perturb: float = 0.01, min_count: float = 20.0, seed: int = 0) -> dict:
    """Mirror of ``gmm-est --update-flags=mvwt --mix-up``: transitions, GMMs, then mix-up
    (its perturbation seeded by ``seed``)."""
    tm.mle_update(st.trans, khg.MleTransitionUpdateConfig())
    opts = khg.MleDiagGmmOptions()
    opts.min_gaussian_occupancy = min_gauss_occ
    flags = int(_khg.kGmmAll)
    for p in range(am.num_pdfs):
        if st.occ[p] is None:        # no data: Kaldi would only warn; keep the pdf as it is
            continue
        g = am.get_pdf(p)            # a reference: updated in place
        acc = _khg.AccumDiagGmm(g, flags)
        for c in range(g.num_gauss):
            acc.add_stats_for_component(c, float(st.occ[p][c]), st.x[p][c], st.x2[p][c])
        _khg.mle_diag_gmm_update(opts, acc, flags, g)
    if mix_up > am.num_gauss:
        split_by_count(am, st.pdf_occs(), int(mix_up), perturb, power, min_count, seed)
    am.compute_gconsts()
    return {"like_per_frame": st.tot_like / max(st.frames, 1), "frames": st.frames,
            "gauss": int(am.num_gauss)}


# ----------------------------------------------------------------------------------------------
# LDA + MLLT feature transform (steps/train_lda_mllt.sh)
# ----------------------------------------------------------------------------------------------

def apply_transform(x: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """Kaldi's ``transform-feats``: ``x @ mat.T`` (a (D', D) linear transform)."""
    return np.ascontiguousarray(np.asarray(x, np.float32) @ np.asarray(mat, np.float32).T)


def _frame_mask(tm, ali: np.ndarray, silence_phones) -> np.ndarray:
    """False on frames of ``silence_phones``: Kaldi's ``weight-silence-post 0.0``."""
    if not len(silence_phones):
        return np.ones(len(ali), bool)
    t = T._tid_table(tm)
    is_sil = np.zeros(int(t.phone.max()) + 1, bool)
    is_sil[list(silence_phones)] = True
    return ~is_sil[t.phone[ali]]


def acc_lda(tm, x: np.ndarray, ali: np.ndarray, silence_phones=()) -> tuple:
    """Mirror of ``acc-lda`` over pdf classes with silence weighted 0 (as train_lda_mllt.sh).

    Returns (count per pdf, sum of x per pdf, total scatter sum x x^T), float64."""
    keep = _frame_mask(tm, ali, silence_phones)
    pdf = np.asarray(tm.transition_id_to_pdf_array(), np.int64)[ali[keep]]
    x = np.asarray(x[keep], np.float64)
    n = int(tm.num_pdfs)
    counts = np.bincount(pdf, minlength=n).astype(np.float64)
    sums = np.zeros((n, x.shape[1]))
    np.add.at(sums, pdf, x)
    return counts, sums, x.T @ x


def est_lda(counts: np.ndarray, sums: np.ndarray, scatter: np.ndarray, dim: int) -> np.ndarray:
    """Mirror of ``est-lda --dim=D``: the (dim, D) LDA matrix.

    With the within-class covariance W = C C^T (Cholesky) and the between-class covariance B,
    the rows are the leading eigenvectors of C^-1 B C^-T mapped back by C^-1, so the output
    has unit within-class covariance and diagonal between-class covariance, dims sorted by
    between/within ratio."""
    used = counts > 0
    counts, sums = counts[used], sums[used]
    n = counts.sum()
    mean = sums.sum(0) / n
    total = scatter / n - np.outer(mean, mean)
    dev = sums / counts[:, None] - mean
    between = (dev * (counts / n)[:, None]).T @ dev
    within = total - between
    c_inv = np.linalg.inv(np.linalg.cholesky(within))
    vals, vecs = np.linalg.eigh(c_inv @ between @ c_inv.T)
    order = np.argsort(vals)[::-1][:dim]
    return (vecs[:, order].T @ c_inv).astype(np.float32)


def acc_mllt(tm, am, x: np.ndarray, ali: np.ndarray, silence_phones=()) -> tuple:
    """Mirror of ``gmm-acc-mllt`` (silence weighted 0): (beta, G) with beta the frame count and
    ``G[i] = sum_m sum_t gamma_mt / var_mi (x_t - mu_m)(x_t - mu_m)^T``, the Gaussian-level
    stats of the semi-tied-covariance objective."""
    keep = _frame_mask(tm, ali, silence_phones)
    pdf = np.asarray(tm.transition_id_to_pdf_array(), np.int64)[ali[keep]]
    x = np.asarray(x[keep], np.float32)
    d = x.shape[1]
    g_acc = np.zeros((d, d, d))
    order = np.argsort(pdf, kind="stable")
    bounds = np.searchsorted(pdf[order], np.arange(am.num_pdfs + 1))
    for p in range(am.num_pdfs):
        a, b = bounds[p], bounds[p + 1]
        if a == b:
            continue
        g = am.get_pdf(p)
        xp = x[order[a:b]].astype(np.float64)
        post = _posteriors(g, xp)
        mu, ivar = np.asarray(g.means, np.float64), np.asarray(g.inv_vars, np.float64)
        occ, sx = post.sum(0), post.T @ xp
        # per-Gaussian scatter around its mean: sum gamma x x^T - mu s^T - s mu^T + occ mu mu^T
        sxx = np.einsum("tm,td,te->mde", post, xp, xp, optimize=True)
        ms = np.einsum("md,me->mde", mu, sx)
        sxx += occ[:, None, None] * np.einsum("md,me->mde", mu, mu) - ms - ms.transpose(0, 2, 1)
        g_acc += np.einsum("mi,mde->ide", ivar, sxx, optimize=True)
    return float(len(x)), g_acc


def _posteriors(g, x: np.ndarray) -> np.ndarray:
    ll = np.asarray(g.log_likelihoods_matrix(x.astype(np.float32)), np.float64)
    post = np.exp(ll - ll.max(1, keepdims=True))
    return post / post.sum(1, keepdims=True)


def mllt_objf(mat: np.ndarray, beta: float, g_acc: np.ndarray) -> float:
    """The MLLT auxiliary function ``beta log|det M| - 1/2 sum_i m_i G_i m_i^T``."""
    return beta * np.linalg.slogdet(mat)[1] - 0.5 * float(np.einsum("id,ide,ie->", mat, g_acc, mat))


def est_mllt(beta: float, g_acc: np.ndarray, num_iters: int = 10) -> tuple[np.ndarray, float]:
    """Mirror of ``est-mllt`` (``MlltAccs::Update``): Gales' row-by-row semi-tied covariance
    update from the identity, row i <- c_i G_i^-1 sqrt(beta / (c_i G_i^-1 c_i^T)) with c_i the
    cofactor row; returns (square transform, objective improvement per frame)."""
    d = g_acc.shape[0]
    mat = np.eye(d)
    g_inv = np.linalg.inv(g_acc)
    start = mllt_objf(mat, beta, g_acc)
    for _ in range(num_iters):
        for i in range(d):
            c = np.linalg.inv(mat).T[i]          # cofactor row up to the factor det(M)
            gc = g_inv[i] @ c
            mat[i] = gc * np.sqrt(beta / float(c @ gc))
    return mat, (mllt_objf(mat, beta, g_acc) - start) / beta


def transform_means(am, mat: np.ndarray) -> None:
    """Mirror of ``gmm-transform-means``: every mean mu -> M mu (variances unchanged)."""
    m = np.asarray(mat, np.float64)
    for p in range(am.num_pdfs):
        g = am.get_pdf(p)
        g.set_means((np.asarray(g.means, np.float64) @ m.T).astype(np.float32))
    am.compute_gconsts()


# ----------------------------------------------------------------------------------------------
# Training loops (steps/train_mono.sh, steps/train_deltas.sh)
# ----------------------------------------------------------------------------------------------

# Kaldi's defaults of steps/train_mono.sh and steps/train_deltas.sh; params.yaml's `gmm.mono`,
# `gmm.tri` and `gmm.align` override any of them.
DEFAULTS = {
    "mono": {"num_iters": 40, "tot_gauss": 1000, "max_iter_inc": 30, "power": 0.25,
             "min_gaussian_occupancy": 3.0, "first_beam": 6.0, "beam": 10.0,
             "retry_beam": 40.0, "boost_silence": 1.0,
             "realign_iters": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 23, 26, 29,
                               32, 35, 38]},
    "tri": {"num_iters": 35, "num_leaves": 2000, "tot_gauss": 10000, "max_iter_inc": 25,
            "power": 0.25, "min_gaussian_occupancy": 10.0, "thresh": 300.0,
            "cluster_thresh": None, "beam": 10.0, "retry_beam": 40.0, "boost_silence": 1.0,
            "realign_iters": [10, 20, 30]},
    # steps/train_lda_mllt.sh; tree/Gaussian settings default to those of `tri`
    "lda_mllt": {"enabled": False, "dim": 40, "splice": 3, "num_iters": 35, "max_iter_inc": 25,
                 "realign_iters": [10, 20, 30], "mllt_iters": [2, 4, 6, 12]},
    "align": {"beam": 10.0, "retry_beam": 40.0, "boost_silence": 1.0},
    "scales": {"transition_scale": 1.0, "self_loop_scale": 0.1, "acoustic_scale": 0.1},
}


def merged(gp: dict, name: str) -> dict:
    """Kaldi defaults for ``name`` (mono | tri | lda_mllt | align) with ``gp[name]`` and
    ``gp["scales"]`` laid over them (``lda_mllt`` also takes ``tri``'s tree/Gaussian sizes)."""
    out = {**DEFAULTS["tri"], **DEFAULTS[name]} if name == "lda_mllt" else dict(DEFAULTS[name])
    if name == "lda_mllt":       # unset tree/Gaussian sizes follow the triphone system's
        out.update({k: v for k, v in ((gp or {}).get("tri") or {}).items()
                    if k not in ("num_iters", "max_iter_inc", "realign_iters")})
    out.update((gp or {}).get(name) or {})
    out["scales"] = {**DEFAULTS["scales"], **((gp or {}).get("scales") or {})}
    out["realign_iters"] = [int(i) for i in out.get("realign_iters", [])]
    out["mllt_iters"] = [int(i) for i in out.get("mllt_iters", [])]
    return out


def align_config(gp: dict) -> AlignConfig:
    """steps/align_si.sh settings (beam 10, retry 40, Kaldi's scales)."""
    p = merged(gp, "align")
    return _align_cfg(p, float(p["beam"]), float(p["retry_beam"]))


def _align_cfg(p: dict, beam: float, retry: float) -> AlignConfig:
    return AlignConfig(beam, retry, boost_silence=float(p.get("boost_silence", 1.0)),
                       **p.get("scales", {}))

@dataclass
class GmmSystem:
    """A trained GMM system: khg objects plus the per-iteration log."""
    topo: object
    ctx_dep: object
    tm: object
    am: object
    alis: dict
    log: list = field(default_factory=list)
    tree: object = None            # tree.Tree for the triphone system
    num_questions: int = 0
    timings: dict = field(default_factory=dict)
    transform: np.ndarray | None = None     # final.mat (LDA+MLLT), applied to spliced feats


class _Frames:
    """Training features concatenated once; alignments are concatenated in the same order."""

    def __init__(self, feats: dict):
        self.utts = list(feats)
        self.lens = [len(feats[u]) for u in self.utts]
        self.x = np.concatenate([feats[u] for u in self.utts]).astype(np.float32)

    def alis(self, alis: dict):
        """(frame mask, concatenated alignment) over the utterances that have an alignment."""
        keep = np.repeat([u in alis for u in self.utts], self.lens)
        return keep, np.concatenate([alis[u] for u in self.utts if u in alis]).astype(np.int64)


def _em_step(frames: _Frames, tm, am, alis, min_occ, mix_up, power, seed=0):
    keep, ali = frames.alis(alis)
    st = accumulate(tm, am, frames.x[keep], ali)
    return em_update(tm, am, st, min_occ, mix_up, power, seed=seed)


def _gauss_schedule(start: int, total: int, max_iter_inc: int):
    """train_*.sh: numgauss grows by (total - start) / max_iter_inc after each of the first
    max_iter_inc iterations (integer division, as in bash)."""
    inc = max(0, (total - start) // max(1, max_iter_inc))
    return lambda x: start + inc * min(x, max_iter_inc)


def init_mono(topo, frames: _Frames):
    """Mirror of ``gmm-init-mono``: one Gaussian per pdf at the global mean/variance."""
    phones = list(topo.phones)
    ctx = khg.monophone_context_dependency(
        phones=phones, phone2num_pdf_classes=topo.get_phone_to_num_pdf_classes())
    tm = khg.TransitionModel(ctx_dep=ctx, hmm_topo=topo)
    x = frames.x.astype(np.float64)
    mean, var = x.mean(0), np.maximum(x.var(0), 1e-3)
    am = khg.AmDiagGmm()
    for _ in range(tm.num_pdfs):
        g = khg.DiagGmm(nmix=1, dim=x.shape[1])
        g.set_weights(np.ones(1, np.float32))
        g.set_means(mean[None].astype(np.float32))
        g.set_invvars((1.0 / var)[None].astype(np.float32))
        g.compute_gconsts()
        am.add_pdf(g)
    return ctx, tm, am


def _progress(bar, **info):
    if bar is not None:
        bar.update(1)
        bar.set_postfix({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in info.items()})


def train_mono(topo, feats: dict, aligner: Aligner, p: dict, seed: int = 0,
               bar=None) -> GmmSystem:
    """Mirror of ``steps/train_mono.sh``: equal alignment, then ``num_iters - 1`` EM passes with
    realignment at ``realign_iters`` (beam 6 on the first, then ``beam``; retry 4x) and
    Gaussians growing to ``tot_gauss`` over ``max_iter_inc`` iterations."""
    t0 = time.time()
    frames = _Frames(feats)
    ctx, tm, am = init_mono(topo, frames)
    aligner.compile(tm, ctx)
    alis, info = aligner.equal_align(seed=0)
    t_graph = time.time() - t0
    gauss = _gauss_schedule(am.num_gauss, int(p["tot_gauss"]), int(p["max_iter_inc"]))
    log = [{"iter": 0, "realigned": True, "failed": len(info["failed"]),
            **_em_step(frames, tm, am, alis, p["min_gaussian_occupancy"], gauss(0),
                       p["power"], seed)}]
    _progress(bar, it=0, like=log[-1]["like_per_frame"])
    beam = float(p.get("first_beam", 6.0))
    t_align = 0.0
    for x in range(1, int(p["num_iters"])):
        entry = {"iter": x, "realigned": x in p["realign_iters"]}
        if entry["realigned"]:
            ta = time.time()
            retry = 4 * beam if x == 1 else float(p["retry_beam"])   # Kaldi: retry = 4 * beam
            cfg = _align_cfg(p, beam, retry)
            alis, info = aligner.align(tm, am, cfg)
            t_align += time.time() - ta
            entry.update(failed=len(info["failed"]), align_like_per_frame=info["like_per_frame"])
        entry.update(_em_step(frames, tm, am, alis, p["min_gaussian_occupancy"], gauss(x),
                              p["power"], seed))
        log.append(entry)
        beam = float(p["beam"])
        _progress(bar, it=x, like=entry["like_per_frame"], gauss=entry["gauss"])
    total = time.time() - t0
    return GmmSystem(topo, ctx, tm, am, alis, log, timings={
        "total_s": round(total, 2), "graphs_s": round(t_graph, 2), "align_s": round(t_align, 2),
        "em_s": round(total - t_graph - t_align, 2)})


def build_tri_tree(mono: GmmSystem, feats: dict, lang: Lang, roots, p: dict, seed: int = 0):
    """acc-tree-stats, cluster-phones (+ extra questions), build-tree on ``mono``'s alignments
    (any previous system's); returns (tree, stats, number of questions)."""
    utts = [u for u in feats if u in mono.alis]
    stats = T.acc_tree_stats(mono.tm, (feats[u] for u in utts), (mono.alis[u] for u in utts),
                             ci_phones=lang.silence_ids)
    tree, nq = tree_from_stats(stats, lang, roots, mono.topo.get_phone_to_num_pdf_classes(), p,
                               seed)
    return tree, stats, nq


def tree_from_stats(stats, lang: Lang, roots, num_pdf_classes, p: dict, seed: int = 0):
    """cluster-phones (+ the silence/non-silence extra questions) and build-tree on
    acc-tree-stats output, with ``p``'s num_leaves, thresh and cluster_thresh; returns
    (tree, number of questions)."""
    seen = {e[1] for e in stats}
    sets = [[q] for q in lang.real_phone_ids if q in seen]
    qs = T.auto_questions(stats, sets, seed=seed)
    extra = [sorted(q for q in grp if q in seen) for grp in
             (lang.silence_ids, lang.nonsilence_ids)]
    qs = sorted({tuple(q) for q in qs} | {tuple(q) for q in extra if q})
    tree = T.build_tree(stats, roots, [list(q) for q in qs], num_pdf_classes,
                        max_leaves=int(p["num_leaves"]), thresh=float(p["thresh"]),
                        cluster_thresh=p.get("cluster_thresh"))
    return tree, len(qs)


def train_tri(mono: GmmSystem, feats: dict, aligner: Aligner, lang: Lang, roots, p: dict,
              seed: int = 0, bar=None) -> GmmSystem:
    """Mirror of ``steps/train_deltas.sh``: tree from the previous system's alignments,
    gmm-init-model, convert-ali, then EM with realignment at ``realign_iters`` and Gaussians
    growing from ``num_leaves`` to ``tot_gauss`` over ``max_iter_inc`` iterations."""
    return _train_tree_system(mono, feats, aligner, lang, roots, p, seed, bar)


def _train_tree_system(prev: GmmSystem, feats: dict, aligner: Aligner, lang: Lang, roots,
                       p: dict, seed: int, bar, mllt=None) -> GmmSystem:
    """The loop shared by train_deltas.sh and train_lda_mllt.sh; ``mllt(x, tm, am, alis,
    frames)`` runs before the EM pass of iterations in ``p["mllt_iters"]``."""
    t0 = time.time()
    tree, stats, nq = build_tri_tree(prev, feats, lang, roots, p, seed)
    ctx = T.to_context_dependency(tree)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no stats for pdf.*")  # e.g. unused spn
        tm, am = T.init_model_from_stats(tree, stats, ctx, prev.topo)
    alis = {u: T.convert_ali(prev.tm, tm, ctx, a).astype(np.int32) for u, a in prev.alis.items()}
    t_tree = time.time() - t0
    aligner.compile(tm, ctx)
    frames = _Frames(feats)
    gauss = _gauss_schedule(am.num_pdfs, int(p["tot_gauss"]), int(p["max_iter_inc"]))
    log, t_align, t_mllt = [], 0.0, 0.0
    for x in range(1, int(p["num_iters"])):
        entry = {"iter": x, "realigned": x in p["realign_iters"]}
        if entry["realigned"]:
            ta = time.time()
            alis, info = aligner.align(tm, am, _align_cfg(p, float(p["beam"]),
                                                          float(p["retry_beam"])))
            t_align += time.time() - ta
            entry.update(failed=len(info["failed"]), align_like_per_frame=info["like_per_frame"])
        if mllt is not None and x in p.get("mllt_iters", []):
            tm_ = time.time()
            entry["mllt_objf_impr"] = mllt(x, tm, am, alis, frames)
            t_mllt += time.time() - tm_
        entry.update(_em_step(frames, tm, am, alis, p["min_gaussian_occupancy"], gauss(x),
                              p["power"], seed))
        log.append(entry)
        _progress(bar, it=x, like=entry["like_per_frame"], gauss=entry["gauss"])
    total = time.time() - t0
    timings = {"total_s": round(total, 2), "tree_s": round(t_tree, 2),
               "align_s": round(t_align, 2), "em_s": round(total - t_tree - t_align - t_mllt, 2)}
    if mllt is not None:
        timings["mllt_s"] = round(t_mllt, 2)
    return GmmSystem(prev.topo, ctx, tm, am, alis, log, tree=tree, num_questions=nq,
                     timings=timings)


def train_lda_mllt(prev: GmmSystem, raw: dict, aligner: Aligner, lang: Lang, roots, p: dict,
                   seed: int = 0, bar=None) -> GmmSystem:
    """Mirror of ``steps/train_lda_mllt.sh``.

    ``raw`` are the spliced (+-3) CMN'd cepstra and ``aligner`` was built on the same features.
    acc-lda/est-lda on ``prev``'s alignments (pdf classes, silence excluded) give a ``dim``-row
    LDA; the tree and model are built in that space, and at ``mllt_iters`` gmm-acc-mllt/est-mllt
    estimate a square MLLT M: means become M mu (gmm-transform-means) and the feature transform
    M @ LDA (compose-transforms). The result's ``transform`` is Kaldi's ``final.mat``."""
    t0 = time.time()
    raw_frames = _Frames(raw)
    keep, ali = raw_frames.alis(prev.alis)
    sil = lang.silence_ids
    mat = est_lda(*acc_lda(prev.tm, raw_frames.x[keep], ali, sil), int(p["dim"]))
    aligner.set_transform(mat)
    feats = {u: apply_transform(x, mat) for u, x in raw.items()}
    state = {"mat": mat}
    t_lda = time.time() - t0

    def mllt(x, tm, am, alis, frames):
        keep_, ali_ = frames.alis(alis)
        beta, g_acc = acc_mllt(tm, am, frames.x[keep_], ali_, sil)
        m, impr = est_mllt(beta, g_acc)
        transform_means(am, m)
        state["mat"] = (m @ state["mat"]).astype(np.float32)
        frames.x = apply_transform(raw_frames.x, state["mat"])
        aligner.set_transform(state["mat"])
        return round(float(impr), 4)

    out = _train_tree_system(prev, feats, aligner, lang, roots, p, seed, bar, mllt=mllt)
    out.transform = state["mat"]
    out.timings["lda_s"] = round(t_lda, 2)
    out.timings["total_s"] = round(time.time() - t0, 2)
    return out


# ----------------------------------------------------------------------------------------------
# Phone boundaries against the synthesizer's timings
# ----------------------------------------------------------------------------------------------

def phone_segments(tm, ali, frame_shift: float = 0.01) -> list[tuple[int, float, float]]:
    """(phone id, start s, end s) per phone of a reordered alignment (``ali-to-phones --ctm``).

    Frame t (snip_edges=false) is centred at ``(t + 0.5) * shift``, so it stands for
    ``[t * shift, (t + 1) * shift)``."""
    starts, ends = T.split_to_phones(tm, ali)
    tid2phone = T._tid_table(tm).phone
    ali = np.asarray(ali, np.int64)
    return [(int(tid2phone[ali[s]]), s * frame_shift, (e + 1) * frame_shift)
            for s, e in zip(starts, ends)]


def read_phones_ctm(path: str) -> dict:
    """``utt channel start dur phone`` lines -> utt -> [(phone, start, end)]."""
    out: dict = {}
    with open(path) as f:
        for line in f:
            u, _, s, d, ph = line.split()
            out.setdefault(u, []).append((ph, float(s), float(s) + float(d)))
    return out


def _match(ref: list, hyp: list) -> list[tuple[int, int]]:
    """Index pairs of equal labels on a minimum-edit-distance alignment (Levenshtein)."""
    n, m = len(ref), len(hyp)
    d = np.zeros((n + 1, m + 1), np.int32)
    d[:, 0], d[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1,
                          d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            if ref[i - 1] == hyp[j - 1]:
                pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif d[i, j] == d[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def boundary_accuracy(ref: dict, hyp: dict, tolerances=(0.01, 0.02)) -> dict:
    """Share of phone boundaries within each tolerance of the reference.

    ``ref`` and ``hyp`` map utt -> [(phone symbol, start s, end s)]. The two phone sequences
    are aligned by edit distance (the lexicon's pronunciation may differ from the
    synthesizer's); for every matched phone its start is compared, except at utterance start
    (0 in both by construction)."""
    diffs, n_ref, n_match, utts = [], 0, 0, 0
    for u, r in ref.items():
        h = hyp.get(u)
        if h is None:
            continue
        utts += 1
        n_ref += len(r)
        pairs = _match([x[0] for x in r], [x[0] for x in h])
        n_match += len(pairs)
        diffs += [abs(r[i][1] - h[j][1]) for i, j in pairs if i > 0 and j > 0]
    diffs = np.asarray(diffs)
    out = {"utterances": utts, "ref_phones": n_ref, "matched_phones": n_match,
           "boundaries_compared": int(len(diffs)),
           "mean_abs_error_ms": round(float(diffs.mean() * 1000), 2) if len(diffs) else None}
    for tol in tolerances:
        key = f"within_{int(round(tol * 1000))}ms"
        out[key] = round(float((diffs <= tol + 1e-6).mean()), 4) if len(diffs) else None
    return out
