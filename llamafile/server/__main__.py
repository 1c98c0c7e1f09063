"""`python -m llamafile.server [flags]`: `llamafile --server [flags]` (the one command line, cli.py)."""
import sys

from ..cli import main

sys.exit(main(["--server", *sys.argv[1:]]))
