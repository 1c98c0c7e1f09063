"""PyInstaller entry point of the one-file executable: the same CLI as `python -m llamafile`."""
import sys

from llamafile.cli import main

if __name__ == "__main__":
    sys.exit(main())
