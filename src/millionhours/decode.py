"""Hybrid WFST decoding: Kaldi's ``decode-faster``/``latgen-faster-mapped`` over one HCLG.

Both acoustic models decode through the same 10 ms graph:

* **nnet** (teacher, student): the network's log-posteriors minus ``prior_scale`` times the log
  senone priors (stage 3's counts) are scaled pseudo log-likelihoods (Kaldi's hybrid recipe).
  The network sees 30 ms LFR frames; LFR frame ``t`` stacks 10 ms frames ``3t..3t+2`` and was
  trained on the label of ``3t+1`` (``features.lfr_frame_index``), so its row is repeated
  ``frame_repeat`` (= the LFR skip) times onto exactly those three 10 ms frames, and the tail
  beyond the utterance's 10 ms length is cut. The 10 ms tree, topology and graph of the GMM then
  serve unchanged (a replication choice, see params.yaml ``decode.frame_repeat``). A sub-frame
  model (``model.subframes: 3``) scores each of the three 10 ms frames itself: no repetition.
  The forward pass runs in length-sorted padded batches (GPU if present).
* **gmm** (the stage-2 baseline): the per-pdf GMM log-likelihoods of the MFCC+CMN+delta
  features (``gmm.py``), computed for all pdfs as one matrix product per utterance; the same
  numbers as Kaldi's ``DecodableAmDiagGmmScaled`` (tested).

The search (kaldi-decoder's ``FasterDecoder`` over ``DecodableCtc``, whose column ``i-1`` holds
transition-id ``i``) runs in ``nj`` forked worker processes that share the loaded HCLG. With
``lattice_beam > 0`` it keeps a raw lattice (``LatticeSimpleDecoder``) and the acoustic-scale
sweep rescores that lattice (Kaldi's LMWT loop) instead of searching once per scale.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field

import kaldiio
import numpy as np

from millionhours.toolchain import kaldifst, kaldi_decoder   # noqa: F401  (import order)
from millionhours import alignments, datadir, gmm as gmmmod, kaldi_io
from millionhours.graph import Graph

__all__ = ["DecodeError", "SearchConfig", "NnetScorer", "GmmScorer", "load_scorer",
           "expand_to_tids", "search_utterance", "decode_set", "DecodeOutput", "upsample_rows"]


class DecodeError(ValueError):
    """Bad decoding input; the message is one line naming the file and the fix."""


@dataclass
class SearchConfig:
    beam: float = 13.0
    max_active: int = 7000
    min_active: int = 200
    lattice_beam: float = 0.0         # > 0: a sweep keeps one raw lattice, rescored per scale

    @classmethod
    def from_params(cls, p: dict) -> "SearchConfig":
        return cls(**{k: p[k] for k in cls.__dataclass_fields__ if k in p and p[k] is not None})


# --------------------------------------------------------------------------- acoustic scorers


class NnetScorer:
    """pdf log-likelihoods of a trained network (``models.save_final`` file) at 10 ms."""
    kind = "nnet"

    def __init__(self, path: str, counts_path: str, prior_scale: float = 1.0,
                 frame_repeat: int | None = None, batch_frames: int = 8192, threads: int = 1,
                 device: str | None = None, upsample: str = "repeat", graph_fsf: int = 1):
        if upsample not in UPSAMPLE:
            raise DecodeError(f"params decode.upsample: '{upsample}' is not one of "
                              f"{', '.join(UPSAMPLE)}")
        import torch
        from millionhours import models
        self.torch = torch
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if threads:
            torch.set_num_threads(int(threads))
        self.device = device
        self.model, blob = models.load_final(path, map_location=device)
        self.model.to(device)
        self.num_pdfs = int(blob["num_senones"])
        self.cmvn = np.asarray(blob["cmvn"], np.float64)
        self.stack, self.skip = int(blob["lfr"]["stack"]), int(blob["lfr"]["skip"])
        self.cmn = blob.get("cmn", "global")         # the training's mean normalization
        # teacher | student (final.pt's role "student_<variant>"): picks decode.acwt_sweep's list
        self.role = str(blob.get("role") or "").split("_")[0] or None
        if self.skip % graph_fsf:
            raise DecodeError(f"{path}: its rows are {self.skip} frames apart, which a graph of "
                              f"{graph_fsf}-frame steps cannot use; decode with its own graph")
        self.fsf = int(graph_fsf)          # 10 ms frames per graph frame: 1, or 3 (LFR graph)
        self.frame_repeat = int(frame_repeat or self.skip // self.fsf)
        self.upsample = upsample
        self.batch_frames = int(batch_frames)
        counts = alignments.read_counts(counts_path)
        if len(counts) != self.num_pdfs:
            raise DecodeError(f"{counts_path}: has {len(counts)} senone counts but {path} has "
                              f"{self.num_pdfs} outputs; pass the senone_counts of the targets "
                              f"the model was trained on")
        self.log_prior = (prior_scale * alignments.log_priors(counts)).astype(np.float32)

    def loglikes(self, fbanks: dict) -> dict:
        """utt -> (T, num_pdfs) float32 ``log p(s|x) - prior_scale log p(s)``, one row per graph
        frame: T = the 10 ms frames on a 10 ms graph, the LFR frames on an LFR graph."""
        from millionhours import data, models
        torch = self.torch
        x = {u: data.model_input(f, self.cmvn, self.stack, self.skip, self.cmn)
             for u, f in fbanks.items()}
        out = {}
        with torch.inference_mode():
            for batch in _length_batches(x, self.batch_frames):
                lens = [len(x[u]) for u in batch]
                pad = np.zeros((len(batch), max(lens), x[batch[0]].shape[1]), np.float32)
                for i, u in enumerate(batch):
                    pad[i, :lens[i]] = x[u]
                logits = self.model(torch.from_numpy(pad).to(self.device),
                                    torch.tensor(lens, dtype=torch.int64))
                if self.frame_repeat == 1:               # one row per LFR frame (frame_baselines)
                    logits = models.row_logits(logits)
                logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
                for i, u in enumerate(batch):
                    if logp.ndim == 4:     # sub-frame model: its own 10 ms rows (3 per LFR >= T)
                        rows = logp[i, :lens[i]].reshape(-1, logp.shape[-1])[:len(fbanks[u])]
                    else:
                        rows = upsample_rows(logp[i, :lens[i]], -(-len(fbanks[u]) // self.fsf),
                                             self.frame_repeat, self.stack // 2, self.upsample)
                    out[u] = rows - self.log_prior
        return out


UPSAMPLE = ("repeat", "linear")


def upsample_rows(logp: np.ndarray, n_out: int, repeat: int, centre: int = 1,
                  mode: str = "repeat") -> np.ndarray:
    """(T, S) LFR log-posteriors -> (n_out, S) at 10 ms.

    ``repeat``: row t serves 10 ms frames ``t*repeat .. t*repeat+repeat-1``. ``linear``: the
    posterior of 10 ms frame f interpolates (in probability) the two rows whose trained frames
    (``t*repeat + centre``) surround f, so a frame between two LFR labels is scored by both, the
    way a 10 ms model would see a state boundary that falls inside a 30 ms window.
    """
    if mode == "repeat":
        return np.repeat(logp, repeat, axis=0)[:n_out]
    pos = np.clip((np.arange(n_out) - centre) / repeat, 0, len(logp) - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(logp) - 1)
    w = (pos - lo).astype(np.float32)[:, None]
    prob = np.exp(logp)
    return np.log(np.maximum((1 - w) * prob[lo] + w * prob[hi], 1e-30)).astype(np.float32)


def _length_batches(x: dict, batch_frames: int) -> list[list[str]]:
    """Utterances sorted by length (longest first) packed into batches of at most
    ``batch_frames`` padded frames (an over-long utterance goes alone)."""
    order = sorted(x, key=lambda u: (-len(x[u]), u))
    batches, cur = [], []
    for u in order:
        if cur and len(x[cur[0]]) * (len(cur) + 1) > batch_frames:
            batches.append(cur)
            cur = []
        cur.append(u)
    return batches + ([cur] if cur else [])


class GmmScorer:
    """pdf log-likelihoods of a GMM exp dir (final.mdl with a GMM, + final.mat if LDA+MLLT)."""
    kind = "gmm"
    role = None

    def __init__(self, exp_dir: str, gmm_params: dict, am: kaldi_io.AmDiagGmm):
        from millionhours.bin.train_gmm import read_transform
        self.cfg = gmmmod.FeatConfig.from_params(gmm_params.get("feats"))
        self.mat, splice = read_transform(exp_dir)
        if self.mat is not None:       # LDA+MLLT: spliced static cepstra, then final.mat
            import dataclasses
            self.cfg = dataclasses.replace(self.cfg, delta_order=0, splice=splice)
        self.num_pdfs = am.num_pdfs
        # all components stacked: loglike = gconst + means_invvars.x - 0.5 inv_vars.x^2
        self.w1 = np.concatenate([g.means_invvars for g in am.pdfs]).T.copy()
        self.w2 = (-0.5 * np.concatenate([g.inv_vars for g in am.pdfs])).T.copy()
        self.c = np.concatenate([g.get_gconsts() for g in am.pdfs]).astype(np.float32)
        sizes = np.array([g.num_gauss for g in am.pdfs])
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.comp2pdf = np.repeat(np.arange(self.num_pdfs), sizes)

    def features(self, fbanks: dict, utt2spk: dict) -> dict:
        feats = gmmmod.gmm_features(fbanks, utt2spk, self.cfg)
        if self.mat is not None:
            feats = {u: gmmmod.apply_transform(f, self.mat) for u, f in feats.items()}
        return feats

    def pdf_loglikes(self, x: np.ndarray) -> np.ndarray:
        """(T, D) features -> (T, num_pdfs) log-likelihoods (Kaldi's DiagGmm::LogLikelihood)."""
        x = np.asarray(x, np.float32)
        comp = x @ self.w1 + (x * x) @ self.w2 + self.c
        mx = np.maximum.reduceat(comp, self.starts, axis=1)
        comp -= mx[:, self.comp2pdf]
        np.exp(comp, out=comp)
        return (mx + np.log(np.add.reduceat(comp, self.starts, axis=1))).astype(np.float32)

    def loglikes(self, fbanks: dict, utt2spk: dict) -> dict:
        return {u: self.pdf_loglikes(f) for u, f in self.features(fbanks, utt2spk).items()}


def load_scorer(model: str, params: dict, counts: str | None = None, device: str | None = None,
                graph_fsf: int = 1):
    """A scorer for ``model``: an nnet file (``final.pt``) or a GMM exp dir (``final.mdl``);
    ``graph_fsf``: the graph's frame subsampling factor (an nnet emits one row per graph frame)."""
    dp = params.get("decode") or {}
    if os.path.isdir(model):
        mdl = os.path.join(model, "final.mdl")
        if not os.path.isfile(mdl):
            raise DecodeError(f"{mdl}: missing; MODEL is an nnet final.pt or a GMM exp dir "
                              f"with final.mdl (e.g. exp/tri)")
        try:
            tm, am = kaldi_io.read_model(mdl)
        except kaldi_io.KaldiFormatError as e:
            raise DecodeError(f"{e}; pass the final.mdl of a GMM training") from None
        if am is None:
            raise DecodeError(f"{mdl}: has no GMM (an nnet3 model?); pass a GMM exp dir or "
                              f"a final.pt")
        return GmmScorer(model, params.get("gmm") or {}, am), tm
    if not os.path.isfile(model):
        raise DecodeError(f"{model}: not found; MODEL is an nnet final.pt or a GMM exp dir")
    counts = counts or os.path.join(os.path.dirname(model), "senone_counts")
    if not os.path.isfile(counts):
        raise DecodeError(f"{counts}: missing; pass --counts with the senone_counts of the "
                          f"model's training targets (e.g. exp/targets/train_labeled/senone_counts)")
    return NnetScorer(model, counts, float(dp.get("prior_scale", 1.0)), dp.get("frame_repeat"),
                      int(dp.get("batch_frames", 8192)), int(dp.get("threads", 1)), device,
                      dp.get("upsample") or "repeat", graph_fsf), None


# --------------------------------------------------------------------------- the search


def expand_to_tids(loglik: np.ndarray, tid2pdf: np.ndarray, acwt: float) -> np.ndarray:
    """(T, num_pdfs) -> (T, num_tids) scaled, for DecodableCtc (column i-1 = transition-id i)."""
    return np.ascontiguousarray(acwt * loglik[:, tid2pdf[1:]], dtype=np.float32)


class _Searcher:
    """One process's decoders over the shared HCLG (built lazily: forked workers inherit fst)."""

    def __init__(self, fst, tid2pdf: np.ndarray, cfg: SearchConfig):
        self.fst, self.tid2pdf, self.cfg = fst, tid2pdf, cfg
        self._faster = self._lattice = None

    def faster(self):
        if self._faster is None:
            o = kaldi_decoder.FasterDecoderOptions()
            o.beam, o.max_active, o.min_active = (self.cfg.beam, self.cfg.max_active,
                                                  self.cfg.min_active)
            self._faster = kaldi_decoder.FasterDecoder(self.fst, o)
        return self._faster

    def lattice(self):
        if self._lattice is None:
            c = kaldi_decoder.LatticeSimpleDecoderConfig()
            c.beam, c.lattice_beam = self.cfg.beam, self.cfg.lattice_beam
            self._lattice = kaldi_decoder.LatticeSimpleDecoder(self.fst, c)
        return self._lattice

    def decode(self, loglik: np.ndarray, acwts: list[float]) -> dict:
        """acwt -> (word ids, reached a final state, graph cost, acoustic cost)."""
        if len(loglik) == 0:
            return {a: ([], False, 0.0, 0.0) for a in acwts}
        if self.cfg.lattice_beam > 0 and len(acwts) > 1:
            # one search at the middle scale keeps every path within lattice_beam of the best;
            # each scale's best path is then the shortest path of the rescaled lattice (the
            # LMWT loop of Kaldi's local/score.sh: lattice-scale + lattice-best-path)
            a0 = acwts[len(acwts) // 2]
            dec = self.lattice()
            dec.decode(kaldi_decoder.DecodableCtc(expand_to_tids(loglik, self.tid2pdf, a0)))
            final = np.isfinite(dec.final_relative_cost())
            _, lat = dec.get_raw_lattice()
            out = {}
            for a in acwts:
                lat2 = lat.copy()
                kaldifst.scale_lattice(kaldifst.lattice_scale(1.0, a / a0), lat2)
                out[a] = _linear(kaldifst.shortest_path(lat2), final)
            return out
        dec, out = self.faster(), {}
        for a in acwts:
            dec.decode(kaldi_decoder.DecodableCtc(expand_to_tids(loglik, self.tid2pdf, a)))
            _, best = dec.get_best_path()
            out[a] = _linear(best, dec.reached_final())
        return out


def _linear(lat, final: bool) -> tuple:
    ok, _tids, words, w = kaldifst.get_linear_symbol_sequence(lat)
    if not ok:
        return [], False, float("inf"), float("inf")
    return [int(x) for x in words], bool(final), float(w.value1), float(w.value2)


_WORKER: _Searcher | None = None     # set in the parent before forking the pool


def _search_job(job):
    utt, loglik, acwts = job
    t = time.perf_counter()
    res = _WORKER.decode(loglik, acwts)
    return utt, res, time.perf_counter() - t


def search_utterance(graph: Graph, loglik: np.ndarray, acwt: float,
                     cfg: SearchConfig = SearchConfig()) -> tuple:
    """(word ids, reached final, graph cost, acoustic cost) of one utterance (in-process)."""
    s = _Searcher(graph.fst, graph.tm.tid2pdf(), cfg)
    return s.decode(loglik, [acwt])[acwt]


# --------------------------------------------------------------------------- a whole set


@dataclass
class DecodeOutput:
    hyps: dict = field(default_factory=dict)            # acwt -> {utt: "w1 w2"}
    partial: dict = field(default_factory=dict)         # acwt -> [utts without a final state]
    frames: int = 0                                      # 10 ms frames decoded
    forward_s: float = 0.0                               # scorer wall time (features included)
    search_s: float = 0.0                                # sum of per-utterance search times
    wall_s: float = 0.0
    utts: list = field(default_factory=list)


def read_fbanks(feats_scp: str, utts: list) -> dict:
    scp = kaldiio.load_scp(feats_scp)
    return {u: np.asarray(scp[u], np.float32) for u in utts}


def decode_set(scorer, graph: Graph, feats_dir: str, acwts: list[float], cfg: SearchConfig,
               nj: int = 1, chunk_utts: int = 200, progress: bool = True) -> DecodeOutput:
    """Scores and searches every utterance of ``feats_dir`` at each acoustic scale in ``acwts``.

    Utterances go in chunks of whole speakers (per-speaker CMN for the GMM, bounded memory):
    the scorer runs on a chunk in this process, then ``nj`` workers search it.
    """
    global _WORKER
    from tqdm import tqdm
    t_start = time.perf_counter()
    scp = os.path.join(feats_dir, "feats.scp")
    utt2spk = datadir.read_table(os.path.join(feats_dir, "utt2spk"))
    utts = [u for u in datadir.read_table(scp) if u in utt2spk]
    missing = next((u for u in datadir.read_table(scp) if u not in utt2spk), None)
    if missing is not None:
        raise DecodeError(f"{feats_dir}/utt2spk: utterance '{missing}' of feats.scp is missing; "
                          f"fix the data dir (utils/fix_data_dir.sh)")
    out = DecodeOutput(hyps={a: {} for a in acwts}, partial={a: [] for a in acwts}, utts=utts)
    _WORKER = _Searcher(graph.fst, graph.tm.tid2pdf(), cfg)
    chunks = gmmmod.split_by_speaker(utts, utt2spk, max(1, -(-len(utts) // chunk_utts)))
    pool = mp.get_context("fork").Pool(nj) if nj > 1 else None
    try:
        bar = tqdm(total=len(utts), desc=f"decode {os.path.basename(feats_dir)}", unit="utt",
                   disable=not progress)
        for chunk in chunks:
            t = time.perf_counter()
            fb = read_fbanks(scp, chunk)
            ll = scorer.loglikes(fb, utt2spk) if scorer.kind == "gmm" else scorer.loglikes(fb)
            out.forward_s += time.perf_counter() - t
            jobs = [(u, ll.pop(u), list(acwts)) for u in chunk]
            results = pool.imap_unordered(_search_job, jobs) if pool else map(_search_job, jobs)
            for utt, res, secs in results:
                out.search_s += secs
                out.frames += len(fb[utt])
                for a, (words, final, _g, _ac) in res.items():
                    out.hyps[a][utt] = " ".join(graph.words(words))
                    if not final:
                        out.partial[a].append(utt)
                bar.update(1)
        bar.close()
    finally:
        if pool:
            pool.close()
            pool.join()
        _WORKER = None
    out.wall_s = time.perf_counter() - t_start
    return out


def check_model_graph(scorer, tm, graph: Graph, model: str) -> None:
    """The scorer's senones must be the graph's pdfs (and a GMM's transition-ids its tids)."""
    if graph.tm is None:
        raise DecodeError(f"{graph.dir}/trans.mdl: missing; pass --trans-model with the final.mdl "
                          f"the graph was built with")
    if scorer.kind == "gmm" and graph.fsf != 1:
        raise DecodeError(f"{graph.dir}: a {graph.fsf}x subsampled (LFR) graph; the GMM decodes "
                          f"at 10 ms through the graph of its own tree (e.g. exp/graph)")
    if scorer.num_pdfs != graph.num_pdfs:
        raise DecodeError(f"{model}: has {scorer.num_pdfs} senones but the graph {graph.dir} has "
                          f"{graph.num_pdfs} pdfs; build the graph from the tree the model was "
                          f"trained with")
    if tm is not None and not np.array_equal(tm.tid2pdf(), graph.tm.tid2pdf()):
        raise DecodeError(f"{model}/final.mdl: transition-ids differ from the graph's trans.mdl; "
                          f"rebuild the graph with this model (make_graph ... {model} ...)")
