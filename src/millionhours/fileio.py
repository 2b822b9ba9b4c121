"""Atomic writes: nothing half-written ever looks finished.

Every output goes to a temporary name in the same directory and is renamed into place only when
complete, so an interrupted stage leaves either the old file or no file, never a truncated one.
"""
import contextlib
import hashlib
import json
import os
import shutil


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path beside `path`; renames it to `path` if the block succeeds."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp) if os.path.isfile(tmp) else shutil.rmtree(tmp)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
    """open() that only publishes the file when the with-block completes."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f


def write_json(path: str, obj) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (model and store provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
