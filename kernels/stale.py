"""Dropping Numba caches that outlived a change in another file (source tree only).

Numba re-validates a cached function against its own file's timestamp only, but our jitted
code calls across files (matmul.py inlines simd.py's intrinsics; llamafile/models/fused.py
inlines the kernels). After an edit or an upgrade, an unchanged file could load code built
from the old sources. So: hash every jitted source; when the hash differs from the one stamped
beside the caches, delete those caches once. (The executable has its own scheme:
kernels/cache_locator.py keys its cache directory on the same kind of hash.)
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("kernels", "llamafile/models")


def drop_stale_caches() -> None:
    if os.environ.get("NUMBA_CACHE_DIR"):  # a cache the user placed: theirs to manage
        return
    digest = hashlib.sha256()
    caches = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
        caches.append(ROOT / folder / "__pycache__")
    stamp = ROOT / "kernels" / "__pycache__" / "jit-sources.sha256"
    try:
        if stamp.read_text() == digest.hexdigest():
            return
    except OSError:
        pass
    try:
        for cache in caches:
            for f in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
                f.unlink(missing_ok=True)
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(digest.hexdigest())
    except OSError:  # a read-only install: nothing to drop, nothing to stamp
        pass
