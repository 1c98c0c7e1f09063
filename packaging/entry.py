"""PyInstaller entry point of the one-file executable: the same CLI as `python -m llamafile`."""
import sys

if sys.platform == "win32" and "fcntl" not in sys.modules:
    # weights/fetch.py locks the model cache with fcntl, which Windows lacks: a no-op lock there
    # (it only guards two processes fetching the same model at once) until fetch.py gets a portable one.
    import types
    sys.modules["fcntl"] = types.SimpleNamespace(LOCK_EX=2, LOCK_NB=4, LOCK_UN=8, flock=lambda f, op: None)

from llamafile.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
