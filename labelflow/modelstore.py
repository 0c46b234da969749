"""Model files: one file per trained model, written atomically, loaded only when its sha256 matches.

``save_model(model, path)`` pickles with joblib to a temporary file in the target folder, fsyncs it,
renames it into place (atomic on POSIX) and fsyncs the folder, so a crash never leaves a half-written
model under the final name. It returns the file's sha256, which is also written beside the file
(``<file>.sha256``). ``load_model(path, sha256)`` hashes the file again and refuses it when the hash
differs from the expected one (given, else the one beside the file): a model file changed after it
was written (even with the same size and a reset mtime) is never unpickled.

Plain library code, no Dagster import.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import joblib

_CHUNK = 1 << 20


class ModelIntegrityError(RuntimeError):
    """A model file is missing, or its content does not match the recorded sha256."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so a rename inside it survives a crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_bytes(target: Path, write) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def checksum_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def save_model(model, path: str | os.PathLike) -> str:
    """Write ``model`` to ``path`` (temp + fsync + rename) and its sha256 beside it; returns the sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(path, lambda f: joblib.dump(model, f))
    digest = file_sha256(path)
    _atomic_write_bytes(checksum_path(path), lambda f: f.write(f"{digest}  {path.name}\n".encode()))
    fsync_dir(path.parent)
    return digest


def recorded_sha256(path: str | os.PathLike) -> str | None:
    try:
        return checksum_path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None


def load_model(path: str | os.PathLike, sha256: str | None = None):
    """Load the model at ``path`` after checking its sha256 against ``sha256`` (or, when not given,
    the one recorded beside the file). Raises :class:`ModelIntegrityError` before unpickling anything
    that does not match."""
    path = Path(path)
    if not path.is_file():
        raise ModelIntegrityError(f"model file {path} is missing: materialise svm_model again")
    expected = sha256 or recorded_sha256(path)
    if not expected:
        raise ModelIntegrityError(f"model file {path} has no recorded sha256: refusing to load it")
    actual = file_sha256(path)
    if actual != expected:
        raise ModelIntegrityError(
            f"model file {path} was changed after it was written (sha256 {actual[:12]}..., "
            f"recorded {expected[:12]}...): refusing to load it; materialise svm_model again"
        )
    with open(path, "rb") as f:
        return joblib.load(f)
