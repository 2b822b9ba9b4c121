"""Kaldi acoustic-model files (``final.mdl``, ``tree``) read and written without Kaldi binaries.

Each piece follows Kaldi's own C++ Read/Write code field by field (kaldi-asr/kaldi, master of
2025-07):

* :class:`KaldiReader` / :class:`KaldiWriter`: ``src/base/io-funcs.cc``, ``io-funcs-inl.h``
  (``\\0B`` binary header, tokens followed by a space, integers as a size byte + little-endian
  value, floats as a size byte + IEEE value) and ``src/matrix/kaldi-vector.cc`` /
  ``kaldi-matrix.cc`` (``FV``/``DV`` vectors, ``FM``/``DM`` matrices, ``[ ... ]`` in text).
* :class:`Topology`: ``src/hmm/hmm-topology.cc`` (HmmTopology).
* :class:`TransitionModel`: ``src/hmm/transition-model.cc`` (Read/Write, ComputeDerived).
* :class:`DiagGmm` / :class:`AmDiagGmm`: ``src/gmm/diag-gmm.cc``, ``src/gmm/am-diag-gmm.cc``.
* :class:`ContextDependency` and the event maps: ``src/tree/context-dep.cc``,
  ``src/tree/event-map.cc``.

Binary output is byte-identical to Kaldi's. Text output has Kaldi's layout, but by default floats
are written with the shortest digits that read back to the same float32, so text round trips
are exact. Kaldi writes 7 significant digits, which loses precision; pass ``float_digits=7``
to get Kaldi's text output exactly.

Native Kaldi packages are imported lazily, and only through :mod:`millionhours.toolchain`
(see its docstring for the import-order deadlock).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "KaldiFormatError", "KaldiReader", "KaldiWriter",
    "HmmState", "Topology", "TransitionModel", "DiagGmm", "AmDiagGmm",
    "ConstantEventMap", "TableEventMap", "SplitEventMap", "ContextDependency",
    "read_model", "write_model", "read_tree", "write_tree",
    "to_khg", "from_khg", "tree_to_khg", "tree_from_khg", "model_bytes", "tree_bytes",
]

_WS = b" \t\n\r\v\f"
_M_LOG_2PI = 1.8378770664093454835606594728112  # Kaldi's M_LOG_2PI (kaldi-math.h)


class KaldiFormatError(ValueError):
    """A malformed or unexpected Kaldi file; the message is one line and names the file."""


# --------------------------------------------------------------------------- low-level I/O


class KaldiReader:
    """Reads Kaldi objects from bytes, in binary (``\\0B`` header) or text mode.

    Mirrors ``src/base/io-funcs.cc`` (ReadToken, ExpectToken, ReadBasicType,
    ReadIntegerVector, Peek) and ``kaldi-vector.cc``/``kaldi-matrix.cc`` (Read).
    ``name`` (usually the file path) starts every error message.
    """

    def __init__(self, data: bytes, name: str = "<bytes>"):
        self.data = bytes(data)
        self.name = str(name)
        # InitKaldiInputStream: "\0B" means binary; anything else is text.
        self.binary = self.data[:2] == b"\0B"
        self.pos = 2 if self.binary else 0

    @classmethod
    def from_file(cls, path) -> "KaldiReader":
        with open(path, "rb") as f:
            return cls(f.read(), str(path))

    # -- errors and low-level cursor helpers
    def error(self, msg: str) -> KaldiFormatError:
        return KaldiFormatError(f"{self.name}: {msg} (at byte {self.pos})")

    def _need(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise self.error(f"unexpected end of file while reading {what}; truncated file?")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def _skip_ws(self) -> None:
        d, p = self.data, self.pos
        while p < len(d) and d[p] in _WS:
            p += 1
        self.pos = p

    def _word(self, what: str) -> str:
        """Like C++ ``is >> str``: skip whitespace, read up to the next whitespace."""
        self._skip_ws()
        start = p = self.pos
        d = self.data
        while p < len(d) and d[p] not in _WS:
            p += 1
        if p == start:
            raise self.error(f"unexpected end of file while reading {what}; truncated file?")
        self.pos = p
        return d[start:p].decode("latin-1")

    def eof(self) -> bool:
        """True when only whitespace (text) or nothing (binary) is left."""
        if self.binary:
            return self.pos >= len(self.data)
        p = self.pos
        while p < len(self.data) and self.data[p] in _WS:
            p += 1
        return p >= len(self.data)

    # -- tokens (io-funcs.cc)
    def read_token(self) -> str:
        """ReadToken: a word that must be followed by one whitespace char, which is consumed."""
        tok = self._word("a token")
        if self.pos >= len(self.data) or self.data[self.pos] not in _WS:
            raise self.error(f"expected space after token '{tok}'; truncated file?")
        self.pos += 1
        return tok

    def peek_token(self) -> str | None:
        """The next token without consuming it (None at end of file)."""
        save = self.pos
        try:
            return self._word("a token") if not self.eof() else None
        finally:
            self.pos = save

    def peek_char(self) -> str:
        """Peek: next char (after whitespace in text mode), '' at end of file."""
        if not self.binary:
            self._skip_ws()
        return chr(self.data[self.pos]) if self.pos < len(self.data) else ""

    def expect_token(self, token: str, hint: str = "") -> None:
        """ExpectToken; ``hint`` is appended to the error (e.g. 'is this a Kaldi final.mdl?')."""
        start = self.pos
        try:
            got = self.read_token()
        except KaldiFormatError:
            if self.eof():
                self.pos = start
                raise self.error(f"unexpected end of file, expected token {token}; truncated file?")
            raise
        # Kaldi also accepts "Foo>" for "<Foo>" (a PeekToken/unget quirk).
        if got != token and not (token.startswith("<") and got == token[1:]):
            self.pos = start
            shown = got if len(got) <= 40 else got[:37] + "..."
            msg = f"expected token {token}, got '{shown}'"
            raise self.error(msg + (f"; {hint}" if hint else ""))

    # -- scalars (io-funcs-inl.h ReadBasicType)
    def _int(self, size_byte: int, fmt: str, what: str) -> int:
        if self.binary:
            b = self._need(1, what)[0]
            if b != size_byte:
                raise self.error(f"expected {what} (size byte {size_byte}), got size byte {b}")
            return struct.unpack(fmt, self._need(struct.calcsize(fmt), what))[0]
        word = self._word(what)
        try:
            return int(word)
        except ValueError:
            raise self.error(f"expected {what}, got '{word[:40]}'") from None

    def read_int32(self) -> int:
        return self._int(4, "<i", "int32")

    def read_uint32(self) -> int:
        return self._int(0xFC, "<I", "uint32")  # size byte is -4 (unsigned) as a char

    def read_float(self) -> float:
        """ReadBasicType<float>: float32 or float64 on disk, returned as a float32 value."""
        if self.binary:
            b = self._need(1, "float")[0]
            if b == 4:
                return float(np.frombuffer(self._need(4, "float"), "<f4")[0])
            if b == 8:
                return float(np.float32(np.frombuffer(self._need(8, "float"), "<f8")[0]))
            raise self.error(f"expected float (size byte 4 or 8), got size byte {b}")
        word = self._word("float")
        try:
            return float(np.float32(float(word)))
        except ValueError:
            raise self.error(f"expected float, got '{word[:40]}'") from None

    # -- vectors and matrices
    def read_int_vector(self) -> np.ndarray:
        """ReadIntegerVector<int32>: binary size byte + int32 count + data; text ``[ 1 2 ]``."""
        if self.binary:
            b = self._need(1, "integer vector")[0]
            if b != 4:
                raise self.error(f"expected int32 vector (size byte 4), got size byte {b}")
            n = struct.unpack("<i", self._need(4, "integer vector"))[0]
            if n < 0:
                raise self.error(f"negative integer vector size {n}")
            return np.frombuffer(self._need(4 * n, "integer vector data"), "<i4").astype(np.int32)
        self._expect_open_bracket("integer vector")
        vals = []
        while True:
            w = self._word("integer vector")
            if w == "]":
                return np.asarray(vals, dtype=np.int32)
            try:
                vals.append(int(w))
            except ValueError:
                raise self.error(f"expected integer in vector, got '{w[:40]}'") from None

    def _expect_open_bracket(self, what: str) -> bool:
        """Consumes '[' (or '[]'); returns True if the object was the empty '[]'."""
        w = self._word(what)
        if w == "[]":
            return True
        if w != "[":
            raise self.error(f"expected '[' to start {what}, got '{w[:40]}'")
        return False

    def read_vector(self) -> np.ndarray:
        """Vector<float>::Read: binary ``FV``/``DV`` + int32 dim + data; text ``[ a b ]``."""
        if self.binary:
            tok = self.read_token()
            if tok not in ("FV", "DV"):
                raise self.error(f"expected vector token FV or DV, got '{tok[:40]}'")
            n = self.read_int32()
            if n < 0:
                raise self.error(f"negative vector size {n}")
            dt, sz = ("<f4", 4) if tok == "FV" else ("<f8", 8)
            return np.frombuffer(self._need(sz * n, "vector data"), dt).astype(np.float32)
        if self._expect_open_bracket("vector"):
            return np.zeros(0, np.float32)
        rows = self._text_rows("vector")
        if len(rows) > 1:
            raise self.error("newline inside a vector (maybe it is a matrix?)")
        return np.asarray(rows[0] if rows else [], dtype=np.float32)

    def read_matrix(self) -> np.ndarray:
        """Matrix<float>::Read: binary ``FM``/``DM`` + rows + cols + data; text rows in ``[ ]``."""
        if self.binary:
            if self.peek_char() == "C":
                raise self.error("compressed matrices (CM) are not supported here")
            tok = self.read_token()
            if tok not in ("FM", "DM"):
                raise self.error(f"expected matrix token FM or DM, got '{tok[:40]}'")
            r, c = self.read_int32(), self.read_int32()
            if r < 0 or c < 0:
                raise self.error(f"negative matrix size {r}x{c}")
            dt, sz = ("<f4", 4) if tok == "FM" else ("<f8", 8)
            raw = self._need(sz * r * c, "matrix data")
            return np.frombuffer(raw, dt).astype(np.float32).reshape(r, c)
        if self._expect_open_bracket("matrix"):
            return np.zeros((0, 0), np.float32)
        rows = self._text_rows("matrix")
        if not rows:
            return np.zeros((0, 0), np.float32)
        if len({len(r) for r in rows}) != 1:
            raise self.error("matrix rows have inconsistent numbers of columns")
        return np.asarray(rows, dtype=np.float32)

    def _text_rows(self, what: str) -> list[list[float]]:
        """Numbers after '[' up to ']', split into rows at newlines or ';' (kaldi-matrix.cc)."""
        end = self.data.find(b"]", self.pos)
        if end < 0:
            self.pos = len(self.data)
            raise self.error(f"unexpected end of file while reading {what}; truncated file?")
        body = self.data[self.pos:end].replace(b";", b"\n")
        rows = []
        for line in body.split(b"\n"):
            words = line.split()
            if words:
                try:
                    rows.append([float(x) for x in words])
                except ValueError:
                    bad = next(x for x in words if not _is_float(x))
                    raise self.error(f"expected number in {what}, got "
                                     f"'{bad[:40].decode('latin-1')}'") from None
        self.pos = end + 1
        for tail in (b"\r\n", b"\n"):  # eat what Kaldi wrote after ']'
            if self.data.startswith(tail, self.pos):
                self.pos += len(tail)
                break
        return rows


def _is_float(word: bytes) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


class KaldiWriter:
    """Writes Kaldi objects to an in-memory buffer; the counterpart of :class:`KaldiReader`.

    Mirrors ``src/base/io-funcs.cc`` (WriteToken, WriteBasicType, WriteIntegerVector,
    InitKaldiOutputStream) and ``kaldi-vector.cc``/``kaldi-matrix.cc`` (Write).
    ``float_digits=None`` writes text floats with the shortest round-trip digits of a float32;
    ``float_digits=7`` reproduces Kaldi's own (lossy) text output.
    """

    def __init__(self, binary: bool = True, float_digits: int | None = None):
        self.binary = bool(binary)
        self.float_digits = float_digits
        self._parts: list[bytes] = [b"\0B"] if self.binary else []

    def getvalue(self) -> bytes:
        return b"".join(self._parts)

    def _put(self, b: bytes) -> None:
        self._parts.append(b)

    def _fmt(self, x) -> str:
        x = np.float32(x)
        if not np.isfinite(x):
            return "nan" if np.isnan(x) else ("inf" if x > 0 else "-inf")
        if self.float_digits is not None:
            return "%.*g" % (self.float_digits, float(x))  # == C++ ostream, precision n
        s = str(x)  # numpy: shortest digits that round-trip the float32
        return s[:-2] if s.endswith(".0") else s

    def newline(self) -> None:
        """Kaldi's ``if (!binary) os << "\\n"``."""
        if not self.binary:
            self._put(b"\n")

    def write_token(self, token: str) -> None:
        if not token or any(c.isspace() for c in token):
            raise ValueError(f"invalid Kaldi token {token!r}")
        self._put(token.encode("latin-1") + b" ")

    def write_int32(self, v: int) -> None:
        self._put(b"\x04" + struct.pack("<i", int(v)) if self.binary else b"%d " % int(v))

    def write_uint32(self, v: int) -> None:
        self._put(b"\xfc" + struct.pack("<I", int(v)) if self.binary else b"%d " % int(v))

    def write_float(self, v: float) -> None:
        if self.binary:
            self._put(b"\x04" + np.float32(v).astype("<f4").tobytes())
        else:
            self._put(self._fmt(v).encode() + b" ")

    def write_int_vector(self, v: Iterable[int]) -> None:
        a = np.asarray(list(v) if not isinstance(v, np.ndarray) else v, dtype="<i4").ravel()
        if self.binary:
            self._put(b"\x04" + struct.pack("<i", a.size) + a.tobytes())
        else:
            self._put(("[ " + "".join(f"{int(x)} " for x in a) + "]\n").encode())

    def write_vector(self, v) -> None:
        a = np.asarray(v, dtype="<f4").ravel()
        if self.binary:
            self.write_token("FV")
            self.write_int32(a.size)
            self._put(a.tobytes())
        else:
            self._put((" [ " + "".join(self._fmt(x) + " " for x in a) + "]\n").encode())

    def write_matrix(self, m) -> None:
        a = np.asarray(m, dtype="<f4")
        if a.ndim != 2:
            raise ValueError(f"matrix must be 2-D, got shape {a.shape}")
        if self.binary:
            self.write_token("FM")
            self.write_int32(a.shape[0])
            self.write_int32(a.shape[1])
            self._put(np.ascontiguousarray(a).tobytes())
        elif a.shape[1] == 0:
            self._put(b" [ ]\n")
        else:
            rows = "".join("\n  " + "".join(self._fmt(x) + " " for x in row) for row in a)
            self._put((" [" + rows + "]\n").encode())


def _atomic_write(path, data: bytes) -> None:
    """Write ``path + '.tmp'`` then ``os.replace``, so readers never see a partial file."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- topology


@dataclass
class HmmState:
    """HmmTopology::HmmState (hmm-topology.h): pdf classes (-1 = non-emitting) and arcs."""
    forward_pdf_class: int
    self_loop_pdf_class: int
    transitions: list[tuple[int, float]] = field(default_factory=list)  # (dest state, prob)

    @property
    def pdf_class(self) -> int:
        return self.forward_pdf_class


@dataclass
class Topology:
    """HmmTopology (src/hmm/hmm-topology.cc), stored as Kaldi stores it.

    ``phones`` sorted; ``phone2idx[phone]`` indexes ``entries`` (-1 = phone not covered);
    ``entries[i]`` is the list of HMM states shared by the phones that map to ``i``.
    """
    phones: list[int]
    phone2idx: list[int]
    entries: list[list[HmmState]]

    def for_phone(self, phone: int) -> list[HmmState]:
        """TopologyForPhone."""
        if not 0 <= phone < len(self.phone2idx) or self.phone2idx[phone] < 0:
            raise KeyError(f"phone {phone} is not covered by the topology")
        return self.entries[self.phone2idx[phone]]

    def num_pdf_classes(self, phone: int) -> int:
        """NumPdfClasses: 1 + the largest forward or self-loop pdf class of the phone."""
        st = self.for_phone(phone)
        return 1 + max(max(s.forward_pdf_class, s.self_loop_pdf_class) for s in st)

    def phone_to_num_pdf_classes(self) -> list[int]:
        """GetPhoneToNumPdfClasses: indexed by phone, -1 for phones not covered."""
        out = [-1] * (self.phones[-1] + 1)
        for p in self.phones:
            out[p] = self.num_pdf_classes(p)
        return out

    def is_hmm(self) -> bool:
        """IsHmm: every state's forward and self-loop pdf classes agree."""
        return all(s.forward_pdf_class == s.self_loop_pdf_class
                   for e in self.entries for s in e)

    # -- (de)serialization
    @classmethod
    def read(cls, r: KaldiReader) -> "Topology":
        """HmmTopology::Read (binary: member arrays; text: the human-readable topo format)."""
        r.expect_token("<Topology>")
        topo = cls._read_binary(r) if r.binary else cls._read_text(r)
        topo.check(r.name)
        return topo

    @classmethod
    def _read_binary(cls, r: KaldiReader) -> "Topology":
        phones = [int(x) for x in r.read_int_vector()]
        phone2idx = [int(x) for x in r.read_int_vector()]
        n = r.read_int32()
        is_hmm = n != -1  # -1 flags the extended format with <SelfLoopPdfClass>
        if not is_hmm:
            n = r.read_int32()
        entries = []
        for _ in range(n):
            states = []
            for _ in range(r.read_int32()):
                fwd = r.read_int32()
                slp = fwd if is_hmm else r.read_int32()
                arcs = [(r.read_int32(), r.read_float()) for _ in range(r.read_int32())]
                states.append(HmmState(fwd, slp, arcs))
            entries.append(states)
        r.expect_token("</Topology>")
        return cls(phones, phone2idx, entries)

    @classmethod
    def _read_text(cls, r: KaldiReader) -> "Topology":
        phones, phone2idx, entries = [], [], []
        while True:
            tok = r.read_token()
            if tok == "</Topology>":
                break
            if tok != "<TopologyEntry>":
                raise r.error(f"expected <TopologyEntry> or </Topology>, got '{tok[:40]}'")
            r.expect_token("<ForPhones>")
            these = []
            while (w := r._word("phone list")) != "</ForPhones>":
                try:
                    these.append(int(w))
                except ValueError:
                    raise r.error(f"expected integer phone, got '{w[:40]}'") from None
            states = cls._read_text_states(r)
            for p in these:
                if p <= 0:
                    raise r.error(f"phone {p} must be positive")
                if len(phone2idx) <= p:
                    phone2idx.extend([-1] * (p + 1 - len(phone2idx)))
                if phone2idx[p] != -1:
                    raise r.error(f"phone {p} appears in multiple topology entries")
                phone2idx[p] = len(entries)
                phones.append(p)
            entries.append(states)
        return cls(sorted(phones), phone2idx, entries)

    @staticmethod
    def _read_text_states(r: KaldiReader) -> list[HmmState]:
        states: list[HmmState] = []
        tok = r.read_token()
        while tok != "</TopologyEntry>":
            if tok != "<State>":
                raise r.error(f"expected <State> or </TopologyEntry>, got '{tok[:40]}'")
            if r.read_int32() != len(states):
                raise r.error("topology states must be numbered in order from 0")
            tok = r.read_token()
            fwd = slp = -1
            if tok == "<PdfClass>":
                fwd = slp = r.read_int32()
                tok = r.read_token()
            elif tok == "<ForwardPdfClass>":
                fwd = r.read_int32()
                r.expect_token("<SelfLoopPdfClass>")
                slp = r.read_int32()
                tok = r.read_token()
            st = HmmState(fwd, slp, [])
            while tok == "<Transition>":
                st.transitions.append((r.read_int32(), r.read_float()))
                tok = r.read_token()
            if tok != "</State>":
                raise r.error(f"expected </State>, got '{tok[:40]}'")
            states.append(st)
            tok = r.read_token()
        return states

    def write(self, w: KaldiWriter) -> None:
        """HmmTopology::Write."""
        is_hmm = self.is_hmm()
        w.write_token("<Topology>")
        if w.binary:
            w.write_int_vector(self.phones)
            w.write_int_vector(self.phone2idx)
            if not is_hmm:
                w.write_int32(-1)
            w.write_int32(len(self.entries))
            for e in self.entries:
                w.write_int32(len(e))
                for s in e:
                    w.write_int32(s.forward_pdf_class)
                    if not is_hmm:
                        w.write_int32(s.self_loop_pdf_class)
                    w.write_int32(len(s.transitions))
                    for dst, prob in s.transitions:
                        w.write_int32(dst)
                        w.write_float(prob)
        else:
            self._write_text_entries(w, is_hmm)
        w.write_token("</Topology>")
        w.newline()

    def _write_text_entries(self, w: KaldiWriter, is_hmm: bool) -> None:
        w.newline()
        for i, e in enumerate(self.entries):
            w.write_token("<TopologyEntry>"); w.newline()
            w.write_token("<ForPhones>"); w.newline()
            w._put("".join(f"{p} " for p, idx in enumerate(self.phone2idx) if idx == i).encode())
            w.newline()
            w.write_token("</ForPhones>"); w.newline()
            for j, s in enumerate(e):
                w.write_token("<State>"); w.write_int32(j)
                if s.forward_pdf_class != -1:
                    if is_hmm:
                        w.write_token("<PdfClass>"); w.write_int32(s.forward_pdf_class)
                    else:
                        w.write_token("<ForwardPdfClass>"); w.write_int32(s.forward_pdf_class)
                        w.write_token("<SelfLoopPdfClass>"); w.write_int32(s.self_loop_pdf_class)
                for dst, prob in s.transitions:
                    w.write_token("<Transition>"); w.write_int32(dst); w.write_float(prob)
                w.write_token("</State>"); w.newline()
            w.write_token("</TopologyEntry>"); w.newline()

    def to_text(self) -> str:
        """Kaldi text form (what ``khg.HmmTopology().read`` accepts), floats exact."""
        w = KaldiWriter(binary=False)
        self.write(w)
        return w.getvalue().decode()

    @classmethod
    def from_text(cls, text: str, name: str = "<topology text>") -> "Topology":
        return cls.read(KaldiReader(text.encode(), name))

    def check(self, name: str = "<topology>") -> None:
        """The structural part of HmmTopology::Check."""
        def bad(msg):
            return KaldiFormatError(f"{name}: invalid topology: {msg}")
        if not self.entries or not self.phones:
            raise bad("empty object")
        for p in self.phones:
            if not 0 < p < len(self.phone2idx) or not 0 <= self.phone2idx[p] < len(self.entries):
                raise bad(f"phone {p} has no valid entry")
        for e in self.entries:
            if len(e) <= 1 or e[-1].transitions or e[-1].forward_pdf_class != -1:
                raise bad("each entry needs an emitting state and a final non-emitting state")
            for s in e:
                if any(not 0 <= d < len(e) for d, _ in s.transitions):
                    raise bad("transition to a state outside the entry")


# --------------------------------------------------------------------------- transition model


@dataclass
class TransitionModel:
    """TransitionModel (src/hmm/transition-model.cc).

    ``tuples[s-1] = (phone, hmm_state, forward_pdf, self_loop_pdf)`` for transition state ``s``
    (1-based). ``log_probs`` is indexed by transition-id (index 0 unused). Transition-ids are
    numbered as ComputeDerived does: transition state 1's arcs (in topology order) get ids
    1..n1, state 2's the next ones, and so on. Derived arrays are cached: treat the arrays
    as immutable (or call :meth:`invalidate`).
    """
    topology: Topology
    tuples: np.ndarray
    log_probs: np.ndarray
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.tuples = np.asarray(self.tuples, dtype=np.int32).reshape(-1, 4)
        self.log_probs = np.asarray(self.log_probs, dtype=np.float32).ravel()

    def __eq__(self, other):
        return (isinstance(other, TransitionModel) and self.topology == other.topology
                and np.array_equal(self.tuples, other.tuples)
                and np.array_equal(self.log_probs, other.log_probs))

    def invalidate(self) -> None:
        self._cache.clear()

    # -- ComputeDerived
    def _derived(self) -> dict:
        if not self._cache:
            self._cache.update(self._compute_derived())
        return self._cache

    def _compute_derived(self) -> dict:
        """ComputeDerived: state2id, id2state, id2pdf_id, plus per-tid phone/self-loop/final."""
        n_states = len(self.tuples)
        state2id = np.zeros(n_states + 2, np.int32)
        sid, pdf, phone, hmm_state, is_loop, is_final, idx = [-1], [-1], [-1], [-1], [False], [False], [-1]
        tid = 1
        for s, (ph, hs, fwd, slp) in enumerate(self.tuples.tolist(), start=1):
            state2id[s] = tid
            entry = self.topology.for_phone(ph)
            for k, (dst, _) in enumerate(entry[hs].transitions):
                loop = dst == hs
                sid.append(s); phone.append(ph); hmm_state.append(hs); idx.append(k)
                is_loop.append(loop); is_final.append(dst + 1 == len(entry))
                pdf.append(slp if loop else fwd)  # TransitionIdToPdf
                tid += 1
        state2id[n_states + 1] = tid
        arr = {
            "state2id": state2id, "id2state": np.array(sid, np.int32),
            "id2pdf": np.array(pdf, np.int32), "id2phone": np.array(phone, np.int32),
            "id2hmm_state": np.array(hmm_state, np.int32), "id2index": np.array(idx, np.int32),
            "self_loop": np.array(is_loop, bool), "final": np.array(is_final, bool),
        }
        for a in arr.values():
            a.flags.writeable = False
        return arr

    def num_transition_states(self) -> int:
        return len(self.tuples)

    def num_transition_ids(self) -> int:
        return len(self._derived()["id2state"]) - 1

    def num_pdfs(self) -> int:
        """Kaldi's num_pdfs_: 1 + the largest forward or self-loop pdf in the tuples."""
        return int(self.tuples[:, 2:].max()) + 1 if len(self.tuples) else 0

    def phones(self) -> list[int]:
        return list(self.topology.phones)

    def state2id(self) -> np.ndarray:
        """First transition-id of each 1-based transition state (length num_states + 2)."""
        return self._derived()["state2id"]

    def tid2state(self) -> np.ndarray:
        """Transition state (1-based) per transition-id; index 0 = -1."""
        return self._derived()["id2state"]

    def tid2pdf(self) -> np.ndarray:
        """TransitionIdToPdf; index 0 = -1 (Kaldi's own array holds 0 there)."""
        return self._derived()["id2pdf"]

    def tid2phone(self) -> np.ndarray:
        return self._derived()["id2phone"]

    def tid2hmm_state(self) -> np.ndarray:
        return self._derived()["id2hmm_state"]

    def tid2index(self) -> np.ndarray:
        """TransitionIdToTransitionIndex: which arc of its HMM state (topology order)."""
        return self._derived()["id2index"]

    def tid_is_self_loop(self) -> np.ndarray:
        return self._derived()["self_loop"]

    def tid_is_final(self) -> np.ndarray:
        """IsFinal: the arc enters the final (last) state of the phone's topology entry."""
        return self._derived()["final"]

    def non_self_loop_log_probs(self) -> np.ndarray:
        """ComputeDerivedOfProbs, float32 like Kaldi; indexed by transition state (0 unused)."""
        out = np.zeros(self.num_transition_states() + 1, np.float32)
        loops = np.flatnonzero(self.tid_is_self_loop())
        states = self.tid2state()[loops]
        p = np.float32(1.0) - np.exp(self.log_probs[loops].astype(np.float32))
        p = np.where(p <= 0, np.float32(1e-10), p)
        out[states] = np.log(p.astype(np.float32))
        return out

    # -- (de)serialization
    @classmethod
    def read(cls, r: KaldiReader) -> "TransitionModel":
        """TransitionModel::Read: accepts old ``<Triples>`` and new ``<Tuples>``."""
        r.expect_token("<TransitionModel>", "is this a Kaldi final.mdl?")
        topo = Topology.read(r)
        tok = r.read_token()
        if tok not in ("<Triples>", "<Tuples>"):
            raise r.error(f"expected token <Triples> or <Tuples>, got '{tok[:40]}'")
        n = r.read_int32()
        if n < 0:
            raise r.error(f"negative number of transition states {n}")
        rows = []
        for _ in range(n):
            ph, hs, fwd = r.read_int32(), r.read_int32(), r.read_int32()
            rows.append((ph, hs, fwd, r.read_int32() if tok == "<Tuples>" else fwd))
        r.expect_token("</Tuples>" if tok == "<Tuples>" else "</Triples>")
        r.expect_token("<LogProbs>")
        log_probs = r.read_vector()
        r.expect_token("</LogProbs>")
        r.expect_token("</TransitionModel>")
        tm = cls(topo, np.array(rows, np.int32).reshape(-1, 4), log_probs)
        tm.check(r.name)
        return tm

    def write(self, w: KaldiWriter) -> None:
        """TransitionModel::Write: ``<Triples>`` when the topology is a plain HMM."""
        is_hmm = self.topology.is_hmm()
        w.write_token("<TransitionModel>"); w.newline()
        self.topology.write(w)
        w.write_token("<Triples>" if is_hmm else "<Tuples>")
        w.write_int32(len(self.tuples)); w.newline()
        for ph, hs, fwd, slp in self.tuples.tolist():
            w.write_int32(ph); w.write_int32(hs); w.write_int32(fwd)
            if not is_hmm:
                w.write_int32(slp)
            w.newline()
        w.write_token("</Triples>" if is_hmm else "</Tuples>"); w.newline()
        w.write_token("<LogProbs>"); w.newline()
        w.write_vector(self.log_probs)
        w.write_token("</LogProbs>"); w.newline()
        w.write_token("</TransitionModel>"); w.newline()

    def check(self, name: str = "<transition model>") -> None:
        """The cheap part of TransitionModel::Check (sizes, ranges, non-positive log-probs)."""
        def bad(msg):
            return KaldiFormatError(f"{name}: invalid transition model: {msg}")
        if len(self.tuples) == 0:
            raise bad("no transition states")
        for ph, hs, fwd, slp in self.tuples.tolist():
            try:
                entry = self.topology.for_phone(ph)
            except KeyError:
                raise bad(f"phone {ph} of a transition state is not in the topology") from None
            if not 0 <= hs < len(entry) or fwd < 0 or slp < 0:
                raise bad(f"bad transition state ({ph}, {hs}, {fwd}, {slp})")
        if len(self.log_probs) != self.num_transition_ids() + 1:
            raise bad(f"{len(self.log_probs)} log-probs for {self.num_transition_ids()} "
                      "transition-ids (expected num_tids + 1)")
        if np.any(self.log_probs[1:] > 0) or not np.all(np.isfinite(self.log_probs[1:])):
            raise bad("log-probs must be finite and <= 0")


# --------------------------------------------------------------------------- GMMs


@dataclass
class DiagGmm:
    """DiagGmm (src/gmm/diag-gmm.cc), stored as Kaldi stores it: weights, means*invvars, invvars.

    ``gconsts`` holds what the file held (so re-writing is byte-exact); :meth:`compute_gconsts`
    recomputes them as DiagGmm::ComputeGconsts does. Build from means/variances with
    :meth:`from_means_vars`.
    """
    weights: np.ndarray        # (M,) float32
    means_invvars: np.ndarray  # (M, D) float32
    inv_vars: np.ndarray       # (M, D) float32
    gconsts: np.ndarray | None = None

    def __post_init__(self):
        self.weights = np.asarray(self.weights, np.float32).ravel()
        self.means_invvars = np.asarray(self.means_invvars, np.float32)
        self.inv_vars = np.asarray(self.inv_vars, np.float32)
        if self.gconsts is not None:
            self.gconsts = np.asarray(self.gconsts, np.float32).ravel()

    def __eq__(self, other):
        return (isinstance(other, DiagGmm)
                and all(np.array_equal(getattr(self, k), getattr(other, k))
                        for k in ("weights", "means_invvars", "inv_vars"))
                and np.array_equal(self.get_gconsts(), other.get_gconsts()))

    @classmethod
    def from_means_vars(cls, weights, means, variances) -> "DiagGmm":
        inv = (1.0 / np.asarray(variances, np.float64)).astype(np.float32)
        mi = (np.asarray(means, np.float32) * inv).astype(np.float32)
        g = cls(weights, mi, inv)
        g.gconsts = g.compute_gconsts()
        return g

    @property
    def num_gauss(self) -> int:
        return len(self.weights)

    @property
    def dim(self) -> int:
        return self.inv_vars.shape[1]

    @property
    def means(self) -> np.ndarray:
        return (self.means_invvars / self.inv_vars).astype(np.float32)

    @property
    def vars(self) -> np.ndarray:
        return (1.0 / self.inv_vars).astype(np.float32)

    def compute_gconsts(self) -> np.ndarray:
        """DiagGmm::ComputeGconsts with its float/double mix.

        gc (float) = log(w) + offset, then per dim gc += 0.5*log(iv) - 0.5*mi*mi/iv, the
        right-hand side in double and the sum rounded to float each step, as in the C++.
        """
        f32, f64 = np.float32, np.float64
        offset = f32(-0.5 * _M_LOG_2PI * self.dim)
        with np.errstate(divide="ignore"):
            gc = (_logf(self.weights) + offset).astype(f32)
            log_iv = _logf(self.inv_vars).astype(f64)
        mi, iv = self.means_invvars.astype(f64), self.inv_vars.astype(f64)
        for d in range(self.dim):
            gc = (gc.astype(f64) + (0.5 * log_iv[:, d] - 0.5 * mi[:, d] * mi[:, d] / iv[:, d])
                  ).astype(f32)
        if np.any(np.isnan(gc)):
            raise ValueError("not a number in gconst computation")
        return np.where(np.isinf(gc), -np.abs(gc), gc).astype(f32)

    def get_gconsts(self) -> np.ndarray:
        return self.gconsts if self.gconsts is not None else self.compute_gconsts()

    @classmethod
    def read(cls, r: KaldiReader) -> "DiagGmm":
        """DiagGmm::Read: accepts ``<DiagGMMBegin>``/``<DiagGMMEnd>``; ``<GCONSTS>`` optional."""
        tok = r.read_token()
        if tok not in ("<DiagGMM>", "<DiagGMMBegin>"):
            raise r.error(f"expected token <DiagGMM>, got '{tok[:40]}'")
        tok = r.read_token()
        gconsts = None
        if tok == "<GCONSTS>":
            gconsts = r.read_vector()
            r.expect_token("<WEIGHTS>")
        elif tok != "<WEIGHTS>":
            raise r.error(f"expected token <GCONSTS> or <WEIGHTS>, got '{tok[:40]}'")
        weights = r.read_vector()
        r.expect_token("<MEANS_INVVARS>")
        mi = r.read_matrix()
        r.expect_token("<INV_VARS>")
        iv = r.read_matrix()
        tok = r.read_token()
        if tok not in ("</DiagGMM>", "<DiagGMMEnd>"):
            raise r.error(f"expected token </DiagGMM>, got '{tok[:40]}'")
        m = len(weights)
        if mi.shape != iv.shape or mi.shape[0] != m or (gconsts is not None and len(gconsts) != m):
            raise r.error(f"inconsistent DiagGMM sizes: {m} weights, means_invvars {mi.shape}, "
                          f"inv_vars {iv.shape}")
        return cls(weights, mi, iv, gconsts)

    def write(self, w: KaldiWriter) -> None:
        """DiagGmm::Write."""
        w.write_token("<DiagGMM>"); w.newline()
        w.write_token("<GCONSTS>"); w.write_vector(self.get_gconsts())
        w.write_token("<WEIGHTS>"); w.write_vector(self.weights)
        w.write_token("<MEANS_INVVARS>"); w.write_matrix(self.means_invvars)
        w.write_token("<INV_VARS>"); w.write_matrix(self.inv_vars)
        w.write_token("</DiagGMM>"); w.newline()


def _logf(x: np.ndarray) -> np.ndarray:
    """Kaldi's Log(float) (= logf): computed in double and rounded, i.e. correctly rounded."""
    return np.log(np.asarray(x, np.float64)).astype(np.float32)


@dataclass
class AmDiagGmm:
    """AmDiagGmm (src/gmm/am-diag-gmm.cc): one :class:`DiagGmm` per pdf."""
    pdfs: list[DiagGmm]

    @property
    def num_pdfs(self) -> int:
        return len(self.pdfs)

    @property
    def dim(self) -> int:
        return self.pdfs[0].dim if self.pdfs else 0

    def num_gauss(self) -> int:
        return sum(g.num_gauss for g in self.pdfs)

    @classmethod
    def read(cls, r: KaldiReader) -> "AmDiagGmm":
        """AmDiagGmm::Read."""
        r.expect_token("<DIMENSION>")
        dim = r.read_int32()
        r.expect_token("<NUMPDFS>")
        n = r.read_int32()
        if n <= 0:
            raise r.error(f"<NUMPDFS> must be positive, got {n}")
        pdfs = []
        for i in range(n):
            g = DiagGmm.read(r)
            if g.dim != dim:
                raise r.error(f"pdf {i} has dimension {g.dim}, <DIMENSION> says {dim}")
            pdfs.append(g)
        return cls(pdfs)

    def write(self, w: KaldiWriter) -> None:
        """AmDiagGmm::Write."""
        w.write_token("<DIMENSION>"); w.write_int32(self.dim)
        w.write_token("<NUMPDFS>"); w.write_int32(len(self.pdfs))
        for g in self.pdfs:
            g.write(w)


# --------------------------------------------------------------------------- model files


def read_model(path) -> tuple[TransitionModel, AmDiagGmm | None]:
    """A ``final.mdl`` (binary or text): TransitionModel, then AmDiagGmm if that follows.

    Mirrors gmm-copy's reading (TransitionModel::Read then AmDiagGmm::Read). Returns None for
    the acoustic model when something else follows (e.g. an nnet3 ``<Nnet3>``) or nothing does.
    """
    r = KaldiReader.from_file(path)
    tm = TransitionModel.read(r)
    nxt = r.peek_token()
    if nxt != "<DIMENSION>":
        if nxt and "<DIMENSION>".startswith(nxt) and r.data[r.pos:].strip() == nxt.encode():
            raise r.error(f"unexpected end of file inside token '{nxt}'; truncated file?")
        return tm, None
    am = AmDiagGmm.read(r)
    if am.num_pdfs != tm.num_pdfs():
        raise KaldiFormatError(f"{path}: acoustic model has {am.num_pdfs} pdfs, transition "
                               f"model has {tm.num_pdfs()}")
    return tm, am


def model_bytes(tm: TransitionModel, am: AmDiagGmm | None, binary: bool = True,
                float_digits: int | None = None) -> bytes:
    """The bytes :func:`write_model` writes."""
    w = KaldiWriter(binary, float_digits)
    tm.write(w)
    if am is not None:
        am.write(w)
    return w.getvalue()


def write_model(path, tm: TransitionModel, am: AmDiagGmm | None, binary: bool = True,
                float_digits: int | None = None) -> None:
    """Write a ``final.mdl`` as gmm-copy would (atomically: ``path.tmp`` then rename)."""
    _atomic_write(path, model_bytes(tm, am, binary, float_digits))


# --------------------------------------------------------------------------- tree


class _EventMapBase:
    def map(self, event: dict[int, int]) -> int | None:  # pragma: no cover - interface
        raise NotImplementedError

    def max_result(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class ConstantEventMap(_EventMapBase):
    """ConstantEventMap (event-map.cc, token ``CE``): a leaf."""
    answer: int

    def map(self, event):
        return self.answer

    def max_result(self):
        return self.answer

    def write(self, w: KaldiWriter) -> None:
        w.write_token("CE"); w.write_int32(self.answer)


@dataclass
class TableEventMap(_EventMapBase):
    """TableEventMap (token ``TE``): ``table[value of key]``; None entries are ``NULL``."""
    key: int
    table: list

    def map(self, event):
        v = event.get(self.key)
        if v is None or not 0 <= v < len(self.table) or self.table[v] is None:
            return None
        return self.table[v].map(event)

    def max_result(self):
        return max((t.max_result() for t in self.table if t is not None), default=-1)

    def write(self, w: KaldiWriter) -> None:
        w.write_token("TE"); w.write_int32(self.key); w.write_uint32(len(self.table))
        w.write_token("(")
        for t in self.table:
            _write_event_map(w, t)
        w.write_token(")"); w.newline()


@dataclass
class SplitEventMap(_EventMapBase):
    """SplitEventMap (token ``SE``): ``yes`` if the key's value is in ``yes_set`` else ``no``."""
    key: int
    yes_set: tuple
    yes: _EventMapBase
    no: _EventMapBase

    def __post_init__(self):
        self.yes_set = tuple(int(x) for x in self.yes_set)
        self._set = frozenset(self.yes_set)

    def map(self, event):
        v = event.get(self.key)
        if v is None:
            return None
        return (self.yes if v in self._set else self.no).map(event)

    def max_result(self):
        return max(self.yes.max_result(), self.no.max_result())

    def write(self, w: KaldiWriter) -> None:
        w.write_token("SE"); w.write_int32(self.key); w.write_int_vector(self.yes_set)
        w.write_token("{")
        self.yes.write(w)
        self.no.write(w)
        w.write_token("}"); w.newline()


def _write_event_map(w: KaldiWriter, m) -> None:
    """EventMap::Write (static): ``NULL`` for a missing child."""
    if m is None:
        w.write_token("NULL")
    else:
        m.write(w)


def _read_event_map(r: KaldiReader, depth: int = 0):
    """EventMap::Read: dispatch on the first character (N, C, T, S)."""
    if depth > 10000:
        raise r.error("event map nested too deeply")
    c = r.peek_char()
    if c == "N":
        r.expect_token("NULL")
        return None
    if c == "C":
        r.expect_token("CE")
        return ConstantEventMap(r.read_int32())
    if c == "T":
        r.expect_token("TE")
        key, size = r.read_int32(), r.read_uint32()
        r.expect_token("(")
        table = [_read_event_map(r, depth + 1) for _ in range(size)]
        r.expect_token(")")
        return TableEventMap(key, table)
    if c == "S":
        r.expect_token("SE")
        key = r.read_int32()
        yes_set = tuple(int(x) for x in r.read_int_vector())
        r.expect_token("{")
        yes, no = _read_event_map(r, depth + 1), _read_event_map(r, depth + 1)
        r.expect_token("}")
        if yes is None or no is None:
            raise r.error("SplitEventMap with a NULL child")
        return SplitEventMap(key, yes_set, yes, no)
    if c == "":
        raise r.error("unexpected end of file while reading an event map; truncated file?")
    raise r.error(f"unknown event-map type starting with {c!r} (expected NULL, CE, TE or SE)")


@dataclass
class ContextDependency:
    """ContextDependency (src/tree/context-dep.cc): the ``tree`` file.

    ``N`` = context width, ``P`` = central position, ``to_pdf`` the EventMap whose keys are
    -1 (pdf class) and 0..N-1 (phone at each context position).
    """
    N: int
    P: int
    to_pdf: _EventMapBase | None

    def map(self, phone_ctx: Sequence[int], pdf_class: int) -> int | None:
        """ContextDependency::Compute: the pdf-id, or None where Kaldi returns false."""
        if len(phone_ctx) != self.N:
            raise ValueError(f"phone context has {len(phone_ctx)} phones, tree has N={self.N}")
        event = {-1: int(pdf_class)}
        event.update({i: int(p) for i, p in enumerate(phone_ctx)})
        return self.to_pdf.map(event) if self.to_pdf is not None else None

    @property
    def num_pdfs(self) -> int:
        """NumPdfs: 1 + the largest leaf."""
        return self.to_pdf.max_result() + 1 if self.to_pdf is not None else 0

    @property
    def context_width(self) -> int:
        return self.N

    @property
    def central_position(self) -> int:
        return self.P

    @classmethod
    def read(cls, r: KaldiReader) -> "ContextDependency":
        """ContextDependency::Read (skips the old ``ToLength`` map)."""
        r.expect_token("ContextDependency", "is this a Kaldi tree file?")
        n, p = r.read_int32(), r.read_int32()
        tok = r.read_token()
        if tok == "ToLength":
            _read_event_map(r)
            tok = r.read_token()
        if tok != "ToPdf":
            raise r.error(f"expected token ToPdf, got '{tok[:40]}'")
        to_pdf = _read_event_map(r)
        r.expect_token("EndContextDependency")
        return cls(n, p, to_pdf)

    def write(self, w: KaldiWriter) -> None:
        """ContextDependency::Write."""
        w.write_token("ContextDependency"); w.write_int32(self.N); w.write_int32(self.P)
        w.write_token("ToPdf")
        _write_event_map(w, self.to_pdf)
        w.write_token("EndContextDependency")


def read_tree(path) -> ContextDependency:
    """A Kaldi ``tree`` file (binary or text)."""
    return ContextDependency.read(KaldiReader.from_file(path))


def tree_bytes(tree: ContextDependency, binary: bool = True) -> bytes:
    w = KaldiWriter(binary)
    tree.write(w)
    return w.getvalue()


def write_tree(path, tree: ContextDependency, binary: bool = True) -> None:
    """Write a Kaldi ``tree`` file (atomically)."""
    _atomic_write(path, tree_bytes(tree, binary))


# --------------------------------------------------------------------------- kaldi-hmm-gmm


def _khg():
    from millionhours.toolchain import khg, _khg  # the only safe import order
    return khg, _khg


def tree_to_khg(tree: ContextDependency):
    """A ``khg.ContextDependency`` loaded from our binary serialization (its pickle state is
    the binary tree without the ``\\0B`` header)."""
    khg, _ = _khg()
    cd = khg.ContextDependency.__new__(khg.ContextDependency)
    body = tree_bytes(tree, binary=True)[2:]
    cd.__setstate__((np.frombuffer(body, np.int8).tolist(),))
    return cd


def tree_from_khg(cd) -> ContextDependency:
    """Our :class:`ContextDependency` from a ``khg.ContextDependency`` (via its pickle state)."""
    raw = np.asarray(cd.__getstate__()[0], np.int8).tobytes()
    return ContextDependency.read(KaldiReader(b"\0B" + raw, "<khg.ContextDependency>"))


def to_khg(tm: TransitionModel, am: AmDiagGmm | None):
    """(khg.TransitionModel, khg.AmDiagGmm) holding the same model.

    kaldi-hmm-gmm has no model reader, so the objects are restored through their pickle state:
    the topology through ``HmmTopology.read`` (Kaldi's own text parser), the transition model
    from (tuples, topo, state2id, id2state, id2pdf_id, num_pdfs, log_probs,
    non_self_loop_log_probs), the GMMs from (weights, inv_vars, means_invvars) per pdf (khg
    recomputes the gconsts).
    """
    khg, _k = _khg()
    topo = khg.HmmTopology()
    topo.read(tm.topology.to_text())
    tuples = [_k.TransitionModelTuple(*map(int, t)) for t in tm.tuples]
    id2pdf = tm.tid2pdf().copy()
    id2pdf[0] = 0  # Kaldi leaves index 0 at 0
    id2state = tm.tid2state().copy()
    id2state[0] = 0
    state = (tuples, topo, tm.state2id().tolist(), id2state.tolist(), id2pdf.tolist(),
             tm.num_pdfs(), tm.log_probs.astype(np.float64).tolist(),
             tm.non_self_loop_log_probs().astype(np.float64).tolist())
    ktm = khg.TransitionModel.__new__(khg.TransitionModel)
    ktm.__setstate__(state)
    if am is None:
        return ktm, None
    kam = khg.AmDiagGmm.__new__(khg.AmDiagGmm)
    flat = []
    for g in am.pdfs:
        flat += [g.weights.copy(), g.inv_vars.copy(), g.means_invvars.copy()]
    kam.__setstate__(tuple(flat))
    return ktm, kam


def from_khg(khg_tm, khg_am=None) -> tuple[TransitionModel, AmDiagGmm | None]:
    """Our (TransitionModel, AmDiagGmm) from kaldi-hmm-gmm objects, without loss.

    The topology comes from ``HmmTopology.__getstate__`` (exact float32 probabilities), not
    its text form (which has only 7 digits).
    """
    phones, phone2idx, entries = khg_tm.topo.__getstate__()
    topo = Topology(
        [int(p) for p in phones], [int(i) for i in phone2idx],
        [[HmmState(int(f), int(s), [(int(d), float(np.float32(p))) for d, p in arcs])
          for f, s, arcs in (st.__getstate__() for st in entry)] for entry in entries])
    tuples = np.array([t.__getstate__() for t in khg_tm.tuples], np.int32).reshape(-1, 4)
    tm = TransitionModel(topo, tuples, np.asarray(khg_tm.log_probs, np.float32))
    if khg_am is None:
        return tm, None
    pdfs = []
    for i in range(khg_am.num_pdfs):
        g = khg_am.get_pdf(i)
        pdfs.append(DiagGmm(np.array(g.weights), np.array(g.means_invvars),
                            np.array(g.inv_vars), np.array(g.gconsts)))
    return tm, AmDiagGmm(pdfs)
