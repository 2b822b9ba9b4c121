"""Top-k teacher-posterior store: the soft targets the student learns from on unlabeled data.

The teacher labels each utterance at the low frame rate (30 ms). Per frame we keep the k largest
senone log-posteriors (k = 20 of ~3,000 in the paper): 4k bytes/frame instead of 4*S bytes for
dense float32, about 150x smaller at k = 20, S = 3,000.

On-disk format (version 1)
--------------------------
``store_dir/`` holds one directory per labeling worker, ``shard-NNNNN/`` (shard id, zero-padded
to 5 digits), each written by exactly one process. A finished shard directory contains:

``header.json``
    JSON object: ``format`` ("millionhours-topk"), ``version`` (1), ``k``, ``num_senones``,
    ``frame_shift_ms``, ``dense`` (bool), ``record_layout`` (the exact record dtype, e.g.
    ``"ids:<u2[20],logprobs:<f2[20]"``), ``bytes_per_frame``, ``teacher_hash`` (sha256 of the
    teacher checkpoint), ``shard_id``, ``num_utts``, ``total_frames``, ``data_bytes``.
``index.txt``
    One line per utterance, in write order: ``<utt-id> <frame-offset> <num-frames>``; offsets count
    frames (records) from the start of ``data.bin`` and are contiguous.
``data.bin``
    ``total_frames`` fixed-size little-endian records, no header, no padding.
    Top-k mode: ``k`` uint16 senone ids followed by their ``k`` float16 log-posteriors, sorted by
    descending log-posterior (ties in arbitrary order): 4k bytes/frame (80 at k = 20).
    Dense mode (``k == num_senones``): ``num_senones`` float16 log-posteriors in senone order, ids
    implicit: 2*S bytes/frame. float16 (not float32) so a k sweep against dense targets differs only
    in truncation, not in precision.

Log-posteriors are ``log_softmax`` of the teacher logits (<= 0), clipped to float16's finite range.

Atomicity: a writer builds ``shard-NNNNN.tmp-<pid>/`` and renames the directory to
``shard-NNNNN/`` in ``close()``; a directory rename is atomic on POSIX, so an interrupted writer
never leaves a shard that looks finished. Readers only look at ``shard-<digits>/`` directories.
Reading one utterance is a slice of a ``numpy.memmap`` of ``data.bin``.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import torch

__all__ = [
    "FORMAT", "FORMAT_VERSION", "TopKStoreError", "ShardWriter", "TopKStore", "shard_dir",
    "shard_done", "record_dtype", "bytes_per_frame", "topk_from_logits", "truncate_topk",
    "soft_targets", "soft_ce",
]

FORMAT = "millionhours-topk"
FORMAT_VERSION = 1
MAX_SENONES = 1 << 16  # ids are uint16
_F16_MIN = float(np.finfo(np.float16).min)  # -65504; below this float16 would round to -inf
_SHARD_RE = re.compile(r"^shard-(\d+)$")
_HEADER, _INDEX, _DATA = "header.json", "index.txt", "data.bin"
_SPACE = re.compile(r"\s")
_CHUNK_FRAMES = 4096  # add_batch validates this many padded frames at a time


class TopKStoreError(ValueError):
    """Bad store input: the message names the file and says what to do."""


# ---------------------------------------------------------------------------------------------
# layout

def record_dtype(k: int, num_senones: int, dense: bool) -> np.dtype:
    """The per-frame record; dense records carry no ids (they are implicit: 0..S-1)."""
    if dense:
        return np.dtype([("logprobs", "<f2", (num_senones,))])
    return np.dtype([("ids", "<u2", (k,)), ("logprobs", "<f2", (k,))])


def _layout_string(k: int, num_senones: int, dense: bool) -> str:
    if dense:
        return f"logprobs:<f2[{num_senones}]"
    return f"ids:<u2[{k}],logprobs:<f2[{k}]"


def bytes_per_frame(k: int, num_senones: int, dense: bool = False) -> int:
    return record_dtype(k, num_senones, dense).itemsize


def shard_dir(store_dir: str, shard_id: int) -> str:
    return os.path.join(store_dir, f"shard-{int(shard_id):05d}")


def shard_done(store_dir: str, shard_id: int) -> bool:
    """True if a finished shard exists (its directory only appears by an atomic rename)."""
    return os.path.isfile(os.path.join(shard_dir(store_dir, shard_id), _HEADER))


# ---------------------------------------------------------------------------------------------
# writing

def _check_config(k: int, num_senones: int, dense: bool) -> None:
    if not 1 <= num_senones <= MAX_SENONES:
        raise TopKStoreError(f"num_senones={num_senones} must be in 1..{MAX_SENONES} (uint16 ids)")
    if dense and k != num_senones:
        raise TopKStoreError(f"dense store needs k == num_senones, got k={k}, "
                             f"num_senones={num_senones}")
    if not 1 <= k <= num_senones:
        raise TopKStoreError(f"k={k} must be in 1..num_senones={num_senones}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(store_dir: str, shard_id: int) -> None:
    """Drops temp dirs of this shard left by killed writers (same host; live pids are kept)."""
    prefix = os.path.basename(shard_dir(store_dir, shard_id)) + ".tmp-"
    for name in os.listdir(store_dir):
        pid = name[len(prefix):]
        if name.startswith(prefix) and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(os.path.join(store_dir, name), ignore_errors=True)


def _fsync_write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


class ShardWriter:
    """Writes one shard; use as a context manager. Only close() publishes it.

    ``add`` appends one utterance. Leaving the with-block by an exception discards the shard; a
    killed process leaves only a ``.tmp-<pid>`` directory that readers ignore and the next writer
    of the same shard removes.
    """

    def __init__(self, store_dir: str, shard_id: int, k: int, num_senones: int,
                 frame_shift_ms: float, teacher_hash: str, dense: bool = False,
                 overwrite: bool = False):
        _check_config(k, num_senones, dense)
        if not isinstance(teacher_hash, str) or not teacher_hash:
            raise TopKStoreError("teacher_hash must be a non-empty string (sha256 of the teacher "
                                 "checkpoint)")
        self.store_dir, self.shard_id = store_dir, int(shard_id)
        self.k, self.num_senones, self.dense = int(k), int(num_senones), bool(dense)
        self.frame_shift_ms, self.teacher_hash = frame_shift_ms, teacher_hash
        self.overwrite = overwrite
        self.final_dir = shard_dir(store_dir, shard_id)
        # Refuse early so a labeling worker does not compute a whole shard only to fail at close.
        self._refuse_if_finished()
        os.makedirs(store_dir, exist_ok=True)
        _remove_stale_tmp(store_dir, shard_id)
        self.tmp_dir = f"{self.final_dir}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        os.makedirs(self.tmp_dir)
        self._dtype = record_dtype(self.k, self.num_senones, self.dense)
        self._data = open(os.path.join(self.tmp_dir, _DATA), "wb")
        self._index: list[tuple[str, int, int]] = []
        self._seen: set[str] = set()
        self._frames = 0
        self.closed = False

    def _refuse_if_finished(self) -> None:
        if shard_done(self.store_dir, self.shard_id) and not self.overwrite:
            raise TopKStoreError(f"{self.final_dir} is a finished shard; skip it (shard_done) "
                                 f"or pass overwrite=True to replace it")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def add(self, utt: str, ids, logprobs) -> None:
        """Appends an utterance: ids (T, k) ints and logprobs (T, k) log-posteriors.

        Rows are sorted by descending log-posterior if they are not already. In dense mode ``ids``
        may be None (logprobs in senone order) or a per-row permutation of 0..S-1.
        """
        self._check_open()
        self._check_utt(utt)
        rec = self._records(utt, ids, logprobs)
        self._append([utt], [rec], [len(rec)])

    def add_batch(self, utts, lengths, ids, logprobs) -> None:
        """Appends len(utts) utterances from padded arrays: row b of ids / logprobs (B, T, k)
        holds utts[b] in its first lengths[b] frames (ids None in dense mode).

        The same checks and sorting as ``add``, run once over all valid frames of the batch:
        a labeling batch holds hundreds of utterances, and per-utterance numpy calls cost more
        than the teacher's forward pass on a GPU.
        """
        self._check_open()
        utts = list(utts)
        lengths = np.asarray(lengths, dtype=np.int64)
        lp = _as_numpy(logprobs)
        if len(utts) != len(lengths) or lp.ndim != 3 or lp.shape[0] != len(utts):
            raise TopKStoreError(f"{self.final_dir}: add_batch needs len(utts) == len(lengths) == "
                                 f"rows of logprobs (B, T, k); got {len(utts)}, {len(lengths)}, "
                                 f"{lp.shape}")
        if len(lengths) and (lengths.min() < 0 or lengths.max() > lp.shape[1]):
            raise TopKStoreError(f"{self.final_dir}: lengths must be in 0..{lp.shape[1]}")
        if len(set(utts)) != len(utts):
            raise TopKStoreError(f"{self.final_dir}: utterance ids repeat inside one batch; "
                                 f"label each utterance once")
        for utt in utts:
            self._check_utt(utt)
        ids = None if ids is None else _as_numpy(ids)
        valid = np.arange(lp.shape[1])[None, :] < lengths[:, None]     # (B, T), row-major order
        step = max(1, _CHUNK_FRAMES // max(lp.shape[1], 1))
        try:
            # a few thousand frames at a time: each check's pass then stays in the CPU cache
            recs = [self._records(f"batch of {len(utts)} utterances",
                                  None if ids is None else ids[a:a + step][valid[a:a + step]],
                                  lp[a:a + step][valid[a:a + step]])
                    for a in range(0, len(utts), step)]
        except TopKStoreError:
            # name the offending utterance: redo the checks one utterance at a time
            for b, (utt, n) in enumerate(zip(utts, lengths)):
                self._records(utt, None if ids is None else ids[b, :n], lp[b, :n])
            raise
        self._append(utts, recs, lengths)       # all checked before anything is written

    def _check_open(self) -> None:
        if self.closed:
            raise TopKStoreError(f"{self.final_dir}: add() after close()")

    def _append(self, utts: list[str], recs: list[np.ndarray], lengths) -> None:
        for rec in recs:
            self._data.write(np.ascontiguousarray(rec).view(np.uint8))   # no tobytes() copy
        for utt, n in zip(utts, np.asarray(lengths).tolist()):
            self._index.append((utt, self._frames, n))
            self._seen.add(utt)
            self._frames += n

    def _check_utt(self, utt: str) -> None:
        if not isinstance(utt, str) or not utt or _SPACE.search(utt):
            raise TopKStoreError(f"{self.final_dir}: utterance id {utt!r} must be a non-empty "
                                 f"string without whitespace (Kaldi convention)")
        if utt in self._seen:
            raise TopKStoreError(f"{self.final_dir}: utterance {utt!r} added twice; label each "
                                 f"utterance once")

    def _records(self, utt: str, ids, logprobs) -> np.ndarray:
        raw = _as_numpy(logprobs)
        lp = raw.astype(np.float32, copy=False)
        where = f"{self.final_dir}: utterance {utt!r}"
        if lp.ndim != 2 or lp.shape[1] != self.k:
            raise TopKStoreError(f"{where}: logprobs shape {lp.shape}, expected (T, {self.k})")
        _check_logprobs(lp, where)
        if raw.dtype == np.float16 and (not lp.size or lp.min() >= _F16_MIN):
            lp16 = raw                   # already the stored values (no -inf to clip)
        else:
            lp16 = np.maximum(lp, _F16_MIN).astype(np.float16)
        rec = np.empty(len(lp), self._dtype)
        if self.dense:
            rec["logprobs"] = _to_senone_order(ids, lp16, where)
            return rec
        ids = _check_ids(ids, lp.shape, self.num_senones, where)
        ids, lp16 = _sort_desc(ids, lp16, lp)
        rec["ids"], rec["logprobs"] = ids, lp16
        return rec

    def close(self) -> None:
        """Writes index and header, then publishes the shard by renaming its directory."""
        if self.closed:
            return
        self._data.flush()
        os.fsync(self._data.fileno())
        self._data.close()
        _fsync_write(os.path.join(self.tmp_dir, _INDEX),
                     "".join(f"{u} {o} {n}\n" for u, o, n in self._index))
        _fsync_write(os.path.join(self.tmp_dir, _HEADER),
                     json.dumps(self.header(), indent=2, sort_keys=True) + "\n")
        self._publish()
        self.closed = True

    def header(self) -> dict:
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "k": self.k,
            "num_senones": self.num_senones, "frame_shift_ms": self.frame_shift_ms,
            "dense": self.dense,
            "record_layout": _layout_string(self.k, self.num_senones, self.dense),
            "bytes_per_frame": self._dtype.itemsize, "teacher_hash": self.teacher_hash,
            "shard_id": self.shard_id, "num_utts": len(self._index),
            "total_frames": self._frames, "data_bytes": self._frames * self._dtype.itemsize,
        }

    def _publish(self) -> None:
        self._refuse_if_finished()  # someone may have finished it while we were labeling
        old = None
        if os.path.exists(self.final_dir):
            # A non-empty directory cannot be replaced in one rename: move the old one aside first.
            old = f"{self.final_dir}.old-{os.getpid()}"
            os.rename(self.final_dir, old)
        os.rename(self.tmp_dir, self.final_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Discards the unfinished shard."""
        if not self.closed:
            self._data.close()
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.closed = True


def _as_numpy(x, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x.astype(dtype, copy=False) if dtype is not None else x


def _check_logprobs(lp: np.ndarray, where: str) -> None:
    """lp float32 (T, k). O(T k) and float32: the labeling path runs it on every frame."""
    if lp.size and not (lp <= 1e-3).all():         # one pass: false for NaN, +inf and x > 0
        if np.isnan(lp).any() or np.isposinf(lp).any():
            raise TopKStoreError(f"{where}: logprobs contain NaN or +inf; check the teacher output")
        _not_logposteriors(where)
    # Kept probability mass must be <= 1: catches raw logits passed instead of log_softmax.
    # float32 is ample against the 1% tolerance (k <= 65536 terms, each < 1).
    if lp.size and np.exp(lp).sum(1).max() > 1.01:
        _not_logposteriors(where)


def _not_logposteriors(where: str):
    raise TopKStoreError(f"{where}: values are not log-posteriors (positive or mass > 1); "
                         f"store log_softmax(logits), e.g. via topk_from_logits")


def _check_ids(ids, shape, num_senones: int, where: str) -> np.ndarray:
    ids = None if ids is None else _as_numpy(ids)
    if ids is None or ids.shape != shape or not np.issubdtype(ids.dtype, np.integer):
        raise TopKStoreError(f"{where}: ids must be integers of shape {shape}, got "
                             f"{getattr(ids, 'dtype', None)} {getattr(ids, 'shape', None)}")
    if ids.size and (ids.min() < 0 or ids.max() >= num_senones):
        raise TopKStoreError(f"{where}: senone ids must be in 0..{num_senones - 1}, got "
                             f"{ids.min()}..{ids.max()}; wrong num_senones?")
    srt = np.sort(ids, axis=1)
    if (srt[:, 1:] == srt[:, :-1]).any():
        raise TopKStoreError(f"{where}: a frame lists the same senone id twice")
    return ids.astype(np.uint16, copy=False)


def _sort_desc(ids: np.ndarray, lp16: np.ndarray, lp: np.ndarray):
    """Rows by descending log-posterior; sorted after the float16 cast so stored order matches.
    lp: the float32 values lp16 was rounded from; rounding is monotone, so rows sorted in lp are
    sorted in lp16 (and where they are not, a stable sort by lp16 keeps lp16-sorted rows as-is)."""
    if (lp[:, 1:] <= lp[:, :-1]).all():
        return ids, lp16
    order = np.argsort(-lp16.astype(np.float32), axis=1, kind="stable")
    return np.take_along_axis(ids, order, 1), np.take_along_axis(lp16, order, 1)


def _to_senone_order(ids, lp16: np.ndarray, where: str) -> np.ndarray:
    if ids is None:
        return lp16
    ids = _as_numpy(ids)
    s = lp16.shape[1]
    if ids.shape != lp16.shape or not (np.sort(ids, axis=1) == np.arange(s)).all():
        raise TopKStoreError(f"{where}: dense mode needs ids=None or a permutation of 0..{s - 1} "
                             f"per frame")
    out = np.empty_like(lp16)
    np.put_along_axis(out, ids.astype(np.int64), lp16, 1)
    return out


# ---------------------------------------------------------------------------------------------
# reading

def _read_header(path: str) -> dict:
    try:
        with open(path) as f:
            h = json.load(f)
    except (OSError, ValueError) as e:
        raise TopKStoreError(f"{path}: unreadable header ({e}); delete the shard and relabel it")
    if not isinstance(h, dict) or h.get("format") != FORMAT:
        raise TopKStoreError(f"{path}: not a {FORMAT} header; delete the shard and relabel it")
    if h.get("version") != FORMAT_VERSION:
        raise TopKStoreError(f"{path}: unknown format version {h.get('version')!r} (this reader "
                             f"knows {FORMAT_VERSION}); use a matching millionhours or relabel")
    want = _layout_string(h["k"], h["num_senones"], h["dense"])
    if h.get("record_layout") != want:
        raise TopKStoreError(f"{path}: record layout {h.get('record_layout')!r} differs from "
                             f"{want!r}; relabel the shard")
    return h


def _read_index(path: str, header: dict) -> list[tuple[str, int, int]]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 3:
                raise TopKStoreError(f"{path}:{n}: expected '<utt> <offset> <frames>'; relabel "
                                     f"the shard")
            rows.append((parts[0], int(parts[1]), int(parts[2])))
    expect_off = 0
    for utt, off, n in rows:  # contiguous offsets: a hole or overlap means a corrupt index
        if off != expect_off or n < 0:
            raise TopKStoreError(f"{path}: utterance {utt} at frame {off}, expected "
                                 f"{expect_off}; relabel the shard")
        expect_off += n
    if len(rows) != header["num_utts"] or expect_off != header["total_frames"]:
        raise TopKStoreError(f"{path}: {len(rows)} utts / {expect_off} frames but the header says "
                             f"{header['num_utts']} / {header['total_frames']}; relabel the shard")
    return rows


def _check_data_size(path: str, header: dict) -> None:
    size = os.path.getsize(path) if os.path.exists(path) else -1
    want = header["total_frames"] * header["bytes_per_frame"]
    if size != want:
        kind = "truncated" if size < want else "longer than its index"
        raise TopKStoreError(f"{path}: {kind} ({size} bytes, index needs {want}); delete the "
                             f"shard and relabel it")


class TopKStore:
    """Read-only view of all finished shards of a store, keyed by utterance id.

    The constructor reads headers and indexes only and verifies them (format version, agreement
    between shards, expected k / senone count / teacher hash, data sizes, unique utterances);
    ``get`` memory-maps the data.
    """

    def __init__(self, store_dir: str, expect_k: int | None = None,
                 expect_num_senones: int | None = None, expect_teacher_hash: str | None = None,
                 expect_frame_shift_ms: float | None = None):
        self.store_dir = store_dir
        self._expect = {"k": expect_k, "num_senones": expect_num_senones,
                        "teacher_hash": expect_teacher_hash,
                        "frame_shift_ms": expect_frame_shift_ms}
        self._shards: list[dict] = []   # per shard: dir, header, lazily opened memmap
        self._where: dict[str, tuple[int, int, int]] = {}  # utt -> (shard, offset, frames)
        for d in self._finished_dirs():
            self._load_shard(d)
        if not self._shards:
            raise TopKStoreError(f"{store_dir}: no finished shards; run the labeling stage first")
        h = self._shards[0]["header"]
        self.k, self.num_senones = h["k"], h["num_senones"]
        self.frame_shift_ms, self.teacher_hash = h["frame_shift_ms"], h["teacher_hash"]
        self.is_dense, self.bytes_per_frame = h["dense"], h["bytes_per_frame"]
        self.total_frames = sum(s["header"]["total_frames"] for s in self._shards)
        self._utts = sorted(self._where)

    def _finished_dirs(self) -> list[str]:
        if not os.path.isdir(self.store_dir):
            raise TopKStoreError(f"{self.store_dir}: no such store directory; run the labeling "
                                 f"stage first")
        names = sorted(n for n in os.listdir(self.store_dir) if _SHARD_RE.match(n))
        return [os.path.join(self.store_dir, n) for n in names
                if os.path.isfile(os.path.join(self.store_dir, n, _HEADER))]

    def _load_shard(self, d: str) -> None:
        hpath = os.path.join(d, _HEADER)
        h = _read_header(hpath)
        self._check_expected(h, hpath)
        if self._shards:
            self._check_agrees(h, self._shards[0], hpath)
        rows = _read_index(os.path.join(d, _INDEX), h)
        _check_data_size(os.path.join(d, _DATA), h)
        si = len(self._shards)
        for utt, off, n in rows:
            if utt in self._where:
                other = self._shards[self._where[utt][0]]["dir"]
                raise TopKStoreError(f"{d}: utterance {utt} is also in {other}; each utterance "
                                     f"must be labeled by one shard (delete one of them)")
            self._where[utt] = (si, off, n)
        self._shards.append({"dir": d, "header": h, "mm": None})

    def _check_expected(self, h: dict, hpath: str) -> None:
        for key, want in self._expect.items():
            if want is not None and h[key] != want:
                raise TopKStoreError(f"{hpath}: {key} is {h[key]!r} but {want!r} was expected; "
                                     f"relabel with the current teacher/config or point to the "
                                     f"right store")

    @staticmethod
    def _check_agrees(h: dict, first: dict, hpath: str) -> None:
        for key in ("k", "num_senones", "frame_shift_ms", "teacher_hash", "dense",
                    "record_layout"):
            if h[key] != first["header"][key]:
                raise TopKStoreError(f"{hpath}: {key} {h[key]!r} differs from "
                                     f"{first['header'][key]!r} in {first['dir']}; shards of "
                                     f"one store must come from one labeling run")

    # -- queries --------------------------------------------------------------------------------
    @property
    def utts(self) -> list[str]:
        return list(self._utts)

    def __contains__(self, utt) -> bool:
        return utt in self._where

    def __len__(self) -> int:
        return len(self._where)

    def num_frames(self, utt: str) -> int:
        return self._locate(utt)[2]

    @property
    def dense_float32_bytes_per_frame(self) -> int:
        return 4 * self.num_senones

    @property
    def compression_vs_dense_float32(self) -> float:
        """4*S / bytes_per_frame: 150 at k=20, S=3000."""
        return self.dense_float32_bytes_per_frame / self.bytes_per_frame

    def storage_report(self) -> dict:
        return {"k": self.k, "num_senones": self.num_senones, "dense": self.is_dense,
                "bytes_per_frame": self.bytes_per_frame,
                "dense_float32_bytes_per_frame": self.dense_float32_bytes_per_frame,
                "compression_vs_dense_float32": self.compression_vs_dense_float32,
                "total_frames": self.total_frames, "num_utts": len(self),
                "num_shards": len(self._shards),
                "data_bytes": self.total_frames * self.bytes_per_frame}

    def _locate(self, utt: str) -> tuple[int, int, int]:
        try:
            return self._where[utt]
        except KeyError:
            raise KeyError(f"utterance {utt!r} not in top-k store {self.store_dir}") from None

    def _memmap(self, si: int) -> np.ndarray:
        s = self._shards[si]
        if s["mm"] is None:
            h = s["header"]
            dtype = record_dtype(h["k"], h["num_senones"], h["dense"])
            if h["total_frames"] == 0:  # mmap cannot map an empty file
                s["mm"] = np.empty(0, dtype)
            else:
                s["mm"] = np.memmap(os.path.join(s["dir"], _DATA), dtype=dtype, mode="r",
                                    shape=(h["total_frames"],))
        return s["mm"]

    def get(self, utt: str, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids (T, k) uint16, logprobs (T, k) float16) for one utterance.

        Without ``k``: read-only memmap slices (top-k mode: sorted descending; dense mode: senone
        order, ids a broadcast arange). With ``k`` <= the stored k: the top ``k`` only, for k
        sweeps (a slice in top-k mode; computed from the dense row in dense mode).
        """
        si, off, n = self._locate(utt)
        rec = self._memmap(si)[off:off + n]
        lp = rec["logprobs"]
        ids = (np.broadcast_to(np.arange(self.num_senones, dtype=np.uint16), lp.shape)
               if self.is_dense else rec["ids"])
        if k is None or k == self.k and not self.is_dense:
            return ids, lp
        if not 1 <= k <= self.k:
            raise ValueError(f"k={k} must be in 1..{self.k} (the store's k)")
        if self.is_dense:
            return truncate_topk(lp, k)
        return ids[:, :k], lp[:, :k]

    def targets(self, utt: str, mode: str = "renorm", temperature: float = 1.0,
                k: int | None = None) -> torch.Tensor:
        """Dense (T, S) float32 soft-target distribution for one utterance (see soft_targets)."""
        ids, lp = self.get(utt, k)
        return soft_targets(ids, lp, self.num_senones, mode, temperature)

    dense = targets  # the name in the design brief


# ---------------------------------------------------------------------------------------------
# producing and using targets

def topk_from_logits(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Teacher logits (T, S) -> (ids (T, k) uint16, log-posteriors (T, k) float16), descending."""
    s = logits.shape[-1]
    if logits.dim() != 2 or not 1 <= k <= s or s > MAX_SENONES:
        raise ValueError(f"logits must be (T, S) with S <= {MAX_SENONES} and 1 <= k <= S; got "
                         f"{tuple(logits.shape)}, k={k}")
    with torch.no_grad():
        # float32 log_softmax even for half-precision teachers: fp16 logsumexp loses tail mass.
        lp = torch.log_softmax(logits.detach().float(), dim=-1)
        vals, ids = torch.topk(lp, k, dim=-1, largest=True, sorted=True)
    vals = vals.clamp_min(_F16_MIN)
    return ids.cpu().numpy().astype(np.uint16), vals.cpu().numpy().astype(np.float16)


def truncate_topk(logprobs, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of dense (T, S) log-posteriors in senone order -> (ids uint16, logprobs float16)."""
    lp = torch.from_numpy(np.asarray(logprobs, dtype=np.float32))
    vals, ids = torch.topk(lp, k, dim=-1, sorted=True)
    return ids.numpy().astype(np.uint16), vals.numpy().astype(np.float16)


_MODES = ("renorm", "uniform_residual")


def _target_weights(logprobs: torch.Tensor, num_senones: int, mode: str, temperature: float):
    """Sparse soft target: (weights of the kept ids (N, k), weight of each other id (N, 1)).

    renorm:           q_i = exp(l_i / t) / sum_j exp(l_j / t); other senones 0.
    uniform_residual: rebuild a full distribution p from the kept posteriors p_i = exp(l_i) and
                      spread the missing mass r = 1 - sum_i p_i evenly, p_o = r / (S - k) for each
                      of the S - k other senones; then temper it: q ∝ p^(1/t), i.e.
                      q_i = exp(l_i / t) / Z,  q_o = (r / (S - k))^(1/t) / Z,
                      Z = sum_i exp(l_i / t) + (S - k) (r / (S - k))^(1/t).
                      At t = 1, Z = 1 (the teacher's kept posteriors are used as they are).
    Computed in float64: r = 1 - sum is a small difference of near-equal numbers.
    """
    if mode not in _MODES:
        raise ValueError(f"mode {mode!r} must be one of {_MODES}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    l = logprobs.double()
    k = l.shape[-1]
    scaled = l / temperature
    if mode == "renorm" or k == num_senones:
        w = torch.softmax(scaled, dim=-1)
        return w, torch.zeros_like(w[:, :1])
    # log r = log(1 - exp(lse)) = log(-expm1(lse)); clamp: float16 rounding can push lse over 0
    lse = torch.logsumexp(l, dim=-1, keepdim=True).clamp_max(0.0)
    log_r = torch.log(-torch.expm1(lse))
    log_other = (log_r - np.log(num_senones - k)) / temperature          # log of unnormalised q_o
    log_z = torch.logaddexp(torch.logsumexp(scaled, -1, keepdim=True),
                            log_other + np.log(num_senones - k))
    return torch.exp(scaled - log_z), torch.exp(log_other - log_z)


def _as_tensor(x, dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    arr = np.asarray(x)
    if arr.dtype == np.uint16:  # torch has limited uint16 support; widen first
        arr = arr.astype(np.int64)
    if not arr.flags.writeable:  # read-only memmap slices: torch wants writable memory
        arr = arr.copy()
    return torch.from_numpy(np.ascontiguousarray(arr)).to(dtype)


def soft_targets(ids, logprobs, num_senones: int, mode: str = "renorm",
                 temperature: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    """Dense (T, S) soft-target distribution from stored top-k (see _target_weights); rows sum to 1.

    ids (T, k) and logprobs (T, k) may be numpy (as returned by TopKStore.get) or torch.
    """
    ids_t = _as_tensor(ids, torch.long)
    w, w_other = _target_weights(_as_tensor(logprobs, torch.float64), num_senones, mode,
                                 temperature)
    out = w_other.expand(len(ids_t), num_senones).clone()
    out.scatter_(1, ids_t, w)
    return out.to(dtype)


def soft_ce(log_probs_student: torch.Tensor, ids, logprobs, mode: str = "renorm",
            temperature: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy -sum_s q_s log p_s against the soft target q, without building q densely.

    log_probs_student: (N, S) log_softmax outputs. ids (N, k), logprobs (N, k): stored targets.
    The uniform_residual term uses q_o * (sum over all senones of log p - sum over kept ids).
    reduction: "mean" over frames (default), "sum", or "none" (per-frame (N,)).
    """
    n, s = log_probs_student.shape
    ids_t = _as_tensor(ids, torch.long).to(log_probs_student.device)
    with torch.no_grad():  # the target is a constant: no gradient flows into the teacher side
        w, w_other = _target_weights(_as_tensor(logprobs, torch.float64)
                                     .to(log_probs_student.device), s, mode, temperature)
    w, w_other = w.to(log_probs_student.dtype), w_other.to(log_probs_student.dtype)
    kept = log_probs_student.gather(1, ids_t)
    loss = -(w * kept).sum(1)
    if mode == "uniform_residual" and ids_t.shape[1] < s:
        rest = log_probs_student.sum(1) - kept.sum(1)
        loss = loss - w_other.squeeze(1) * rest
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction {reduction!r} must be 'mean', 'sum' or 'none'")
