"""Content-addressed blob store: bytes are named by their sha256, so writing the same image
twice stores it once and a redelivered task cannot create a second copy."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from core.errors import NotFoundError

_SHA256 = re.compile(r"[0-9a-f]{64}")


def digest(data: bytes) -> str:
    """A blob's name: the sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise NotFoundError(f"blob name {sha256!r} is not a sha256 hex digest", field="sha256")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        sha256 = digest(data)
        path = self._path(sha256)
        if path.exists():
            return sha256
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees a half-written blob, even if we are killed.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha256

    def get(self, sha256: str) -> bytes:
        path = self._path(sha256)
        try:
            return path.read_bytes()
        except FileNotFoundError as e:
            raise NotFoundError(f"blob {sha256} is missing from {self.root}") from e

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).exists()
