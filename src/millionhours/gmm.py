"""GMM-HMM training and alignment: Kaldi's steps/train_mono.sh, train_deltas.sh and align_si.sh.

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
  ``--norm-vars=false``, Kaldi's default in steps/*), then deltas and delta-deltas
  (``add-deltas``, window 2, via kaldi_native_fbank), 39 dims.

Speed: the E-step groups frames by pdf and scores each group with one
``DiagGmm.log_likelihoods_matrix`` call (batched ``gmm-acc-stats-ali``); alignment
(``gmm-align-compiled``) runs in ``nj`` worker processes that each own a fixed set of speakers,
as Kaldi's ``split_data.sh`` jobs do. Everything is deterministic (fixed seeds, fixed shards).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
import zlib
from dataclasses import dataclass, field

import kaldi_native_fbank as knf
import kaldiio
import numpy as np

from millionhours.toolchain import khg, _khg, kaldifst   # noqa: F401  (import order)
from millionhours import tree as T
from millionhours.lang import Lang

__all__ = [
    "FeatConfig", "dct_matrix", "lifter_coeffs", "mfcc_from_fbank", "gmm_features",
    "load_gmm_features", "split_by_speaker", "Aligner", "GmmSystem", "accumulate", "em_update",
    "train_mono", "train_tri", "phone_segments", "boundary_accuracy", "read_phones_ctm",
    "text_to_word_ids",
]


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatConfig:
    num_ceps: int = 13
    cepstral_lifter: float = 22.0
    cmn: str = "speaker"           # speaker | utterance | none
    delta_order: int = 2

    @classmethod
    def from_params(cls, p: dict | None) -> "FeatConfig":
        p = p or {}
        return cls(**{k: p[k] for k in cls.__dataclass_fields__ if k in p})


def dct_matrix(num_ceps: int, num_bins: int) -> np.ndarray:
    """Kaldi's ``ComputeDctMatrix`` (orthonormal DCT-II rows), (num_ceps, num_bins)."""
    k = np.arange(num_ceps)[:, None]
    n = np.arange(num_bins)[None, :]
    m = np.sqrt(2.0 / num_bins) * np.cos(np.pi / num_bins * (n + 0.5) * k)
    m[0] = np.sqrt(1.0 / num_bins)
    return m


def lifter_coeffs(num_ceps: int, q: float) -> np.ndarray:
    """Kaldi's ``ComputeLifterCoeffs``: ``1 + 0.5 Q sin(pi i / Q)``."""
    i = np.arange(num_ceps)
    return 1.0 + 0.5 * q * np.sin(np.pi * i / q) if q else np.ones(num_ceps)


def mfcc_from_fbank(fbank: np.ndarray, num_ceps: int = 13, lifter: float = 22.0) -> np.ndarray:
    """MFCC (compute-mfcc-feats without energy) from log-mel fbank: DCT-II + liftering."""
    m = dct_matrix(num_ceps, fbank.shape[1]) * lifter_coeffs(num_ceps, lifter)[:, None]
    return (np.asarray(fbank, np.float64) @ m.T).astype(np.float32)


def add_deltas(feats: np.ndarray, order: int = 2) -> np.ndarray:
    """Kaldi's ``add-deltas`` (window 2)."""
    opts = knf.DeltaOptions()
    opts.order = order
    return knf.compute_deltas(opts, np.ascontiguousarray(feats, np.float32))


def gmm_features(fbanks: dict, utt2spk: dict, cfg: FeatConfig = FeatConfig()) -> dict:
    """utt -> (T, 39) GMM features for utterances of whole speakers (for per-speaker CMN)."""
    ceps = {u: mfcc_from_fbank(x, cfg.num_ceps, cfg.cepstral_lifter) for u, x in fbanks.items()}
    if cfg.cmn not in ("speaker", "utterance", "none"):
        raise ValueError(f"gmm.feats.cmn must be speaker, utterance or none, got {cfg.cmn!r}")
    if cfg.cmn != "none":
        key = (lambda u: utt2spk[u]) if cfg.cmn == "speaker" else (lambda u: u)
        sums: dict = {}
        for u, c in ceps.items():
            s = sums.setdefault(key(u), [np.zeros(c.shape[1]), 0])
            s[0] += c.sum(0, dtype=np.float64)
            s[1] += len(c)
        for u in ceps:
            s, n = sums[key(u)]
            ceps[u] = (ceps[u] - s / n).astype(np.float32)
    return {u: add_deltas(c, cfg.delta_order) for u, c in ceps.items()}


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


class _Shard:
    """One alignment job: its utterances' features, transcripts and compiled training graphs."""

    def __init__(self, fbank_dir, utts, utt2spk, word_ids, lang_dir, feat_cfg, disambig):
        self.utts = utts
        self.feats = load_gmm_features(fbank_dir, utts, utt2spk, feat_cfg)
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


def em_update(tm, am, st: Stats, min_gauss_occ: float, mix_up: int, power: float,
              perturb: float = 0.01, min_count: float = 20.0) -> dict:
    """Mirror of ``gmm-est --update-flags=mvwt --mix-up``: transitions, GMMs, then mix-up."""
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
        am.split_by_count(state_occs=st.pdf_occs(), target_components=int(mix_up),
                          perturb_factor=perturb, power=power, min_count=min_count)
    am.compute_gconsts()
    return {"like_per_frame": st.tot_like / max(st.frames, 1), "frames": st.frames,
            "gauss": int(am.num_gauss)}


# ----------------------------------------------------------------------------------------------
# Training loops (steps/train_mono.sh, steps/train_deltas.sh)
# ----------------------------------------------------------------------------------------------

# Kaldi's defaults of steps/train_mono.sh and steps/train_deltas.sh; params.yaml's `gmm.mono`,
# `gmm.tri` and `gmm.align` override any of them.
DEFAULTS = {
    "mono": {"num_iters": 40, "tot_gauss": 1000, "max_iter_inc": 30, "power": 0.25,
             "min_gaussian_occupancy": 3.0, "first_beam": 6.0, "beam": 10.0,
             "retry_beam": 40.0,
             "realign_iters": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 23, 26, 29,
                               32, 35, 38]},
    "tri": {"num_iters": 35, "num_leaves": 2000, "tot_gauss": 10000, "max_iter_inc": 25,
            "power": 0.25, "min_gaussian_occupancy": 10.0, "thresh": 300.0,
            "cluster_thresh": None, "beam": 10.0, "retry_beam": 40.0,
            "realign_iters": [10, 20, 30]},
    "align": {"beam": 10.0, "retry_beam": 40.0},
    "scales": {"transition_scale": 1.0, "self_loop_scale": 0.1, "acoustic_scale": 0.1},
}


def merged(gp: dict, name: str) -> dict:
    """Kaldi defaults for ``name`` (mono | tri | align) with ``gp[name]`` and ``gp["scales"]``
    laid over them."""
    out = dict(DEFAULTS[name])
    out.update((gp or {}).get(name) or {})
    out["scales"] = {**DEFAULTS["scales"], **((gp or {}).get("scales") or {})}
    out["realign_iters"] = [int(i) for i in out.get("realign_iters", [])]
    return out


def align_config(gp: dict) -> AlignConfig:
    """steps/align_si.sh settings (beam 10, retry 40, Kaldi's scales)."""
    p = merged(gp, "align")
    return AlignConfig(float(p["beam"]), float(p["retry_beam"]), **p["scales"])

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
    timings: dict = field(default_factory=dict)


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


def _em_step(frames: _Frames, tm, am, alis, min_occ, mix_up, power):
    keep, ali = frames.alis(alis)
    st = accumulate(tm, am, frames.x[keep], ali)
    return em_update(tm, am, st, min_occ, mix_up, power)


def _gauss_schedule(start: int, total: int, max_iter_inc: int):
    """train_*.sh: numgauss grows by (total - start) / max_iter_inc after each of the first
    max_iter_inc iterations (integer division, as in bash)."""
    inc = max(0, (total - start) // max(1, max_iter_inc))
    return lambda x: start + inc * min(x, max_iter_inc)


def init_mono(topo, frames: _Frames):
    """Mirror of ``gmm-init-mono``: one Gaussian per pdf at the global mean/variance."""
    phones = list(topo.phones)
    ctx = khg.monophone_context_dependency(phones=phones,
                                           phone2num_pdf_classes=topo.get_phone_to_num_pdf_classes())
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


def train_mono(topo, feats: dict, aligner: Aligner, p: dict, bar=None) -> GmmSystem:
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
                       p["power"])}]
    _progress(bar, it=0, like=log[-1]["like_per_frame"])
    beam = float(p.get("first_beam", 6.0))
    t_align = 0.0
    for x in range(1, int(p["num_iters"])):
        entry = {"iter": x, "realigned": x in p["realign_iters"]}
        if entry["realigned"]:
            ta = time.time()
            retry = 4 * beam if x == 1 else float(p["retry_beam"])   # Kaldi: retry = 4 * beam
            cfg = AlignConfig(beam, retry, **p.get("scales", {}))
            alis, info = aligner.align(tm, am, cfg)
            t_align += time.time() - ta
            entry.update(failed=len(info["failed"]), align_like_per_frame=info["like_per_frame"])
        entry.update(_em_step(frames, tm, am, alis, p["min_gaussian_occupancy"], gauss(x),
                              p["power"]))
        log.append(entry)
        beam = float(p["beam"])
        _progress(bar, it=x, like=entry["like_per_frame"], gauss=entry["gauss"])
    total = time.time() - t0
    return GmmSystem(topo, ctx, tm, am, alis, log, timings={
        "total_s": round(total, 2), "graphs_s": round(t_graph, 2), "align_s": round(t_align, 2),
        "em_s": round(total - t_graph - t_align, 2)})


def build_tri_tree(mono: GmmSystem, feats: dict, lang: Lang, roots, p: dict, seed: int = 0):
    """acc-tree-stats, cluster-phones (+ extra questions), build-tree; returns (tree, stats)."""
    utts = [u for u in feats if u in mono.alis]
    stats = T.acc_tree_stats(mono.tm, (feats[u] for u in utts), (mono.alis[u] for u in utts),
                             ci_phones=lang.silence_ids)
    seen = {e[1] for e in stats}
    sets = [[q] for q in lang.real_phone_ids if q in seen]
    qs = T.auto_questions(stats, sets, seed=seed)
    extra = [sorted(q for q in grp if q in seen) for grp in
             (lang.silence_ids, lang.nonsilence_ids)]
    qs = sorted({tuple(q) for q in qs} | {tuple(q) for q in extra if q})
    tree = T.build_tree(stats, roots, [list(q) for q in qs],
                        mono.topo.get_phone_to_num_pdf_classes(),
                        max_leaves=int(p["num_leaves"]), thresh=float(p["thresh"]),
                        cluster_thresh=p.get("cluster_thresh"))
    return tree, stats, len(qs)


def train_tri(mono: GmmSystem, feats: dict, aligner: Aligner, lang: Lang, roots, p: dict,
              seed: int = 0, bar=None) -> GmmSystem:
    """Mirror of ``steps/train_deltas.sh``: tree from the monophone alignments,
    gmm-init-model, convert-ali, then EM with realignment at ``realign_iters`` and Gaussians
    growing from ``num_leaves`` to ``tot_gauss`` over ``max_iter_inc`` iterations."""
    import warnings
    t0 = time.time()
    tree, stats, nq = build_tri_tree(mono, feats, lang, roots, p, seed)
    ctx = T.to_context_dependency(tree)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no stats for pdf.*")  # e.g. unused spn
        tm, am = T.init_model_from_stats(tree, stats, ctx, mono.topo)
    alis = {u: T.convert_ali(mono.tm, tm, ctx, a).astype(np.int32) for u, a in mono.alis.items()}
    t_tree = time.time() - t0
    aligner.compile(tm, ctx)
    frames = _Frames(feats)
    gauss = _gauss_schedule(am.num_pdfs, int(p["tot_gauss"]), int(p["max_iter_inc"]))
    log, t_align = [], 0.0
    for x in range(1, int(p["num_iters"])):
        entry = {"iter": x, "realigned": x in p["realign_iters"]}
        if entry["realigned"]:
            ta = time.time()
            cfg = AlignConfig(float(p["beam"]), float(p["retry_beam"]), **p.get("scales", {}))
            alis, info = aligner.align(tm, am, cfg)
            t_align += time.time() - ta
            entry.update(failed=len(info["failed"]), align_like_per_frame=info["like_per_frame"])
        entry.update(_em_step(frames, tm, am, alis, p["min_gaussian_occupancy"], gauss(x),
                              p["power"]))
        log.append(entry)
        _progress(bar, it=x, like=entry["like_per_frame"], gauss=entry["gauss"])
    total = time.time() - t0
    sysm = GmmSystem(mono.topo, ctx, tm, am, alis, log, tree=tree, timings={
        "total_s": round(total, 2), "tree_s": round(t_tree, 2), "align_s": round(t_align, 2),
        "em_s": round(total - t_tree - t_align, 2)})
    sysm.timings["questions"] = nq
    return sysm


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
