"""Start-up cost of the kernels: JIT on a fresh cache, then loading from the warm cache.

    python bench/startup.py [MODEL]

Runs a child process twice with the same empty NUMBA_CACHE_DIR (first run compiles and
fills it, second loads it) and prints, for each: importing the kernels, mapping the
model, the first token of a short prompt (where the kernels compile or load), and a
second, identical evaluation (the steady cost); the kernel overhead is first minus second.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import kernels, llamafile
from llamafile.model import load
t1 = time.perf_counter()
model = load(sys.argv[1], n_ctx=256)
t2 = time.perf_counter()
ids = model.tokenize("The capital of France is")
model.reset(); model.eval(ids); model.eval([ids[-1]])
t3 = time.perf_counter()
model.reset(); model.eval(ids); model.eval([ids[-1]])
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first": t3 - t2, "steady": t4 - t3}))
"""


def run_child(model: str, cache: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", CHILD, model], capture_output=True, text=True, env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    sys.path.insert(0, str(REPO))
    from weights.fetch import fetch
    model = sys.argv[1] if len(sys.argv) > 1 else str(fetch("smollm2"))
    with tempfile.TemporaryDirectory() as cache:
        print(f"{'run':14} {'import s':>9} {'load s':>8} {'first token s':>14} {'steady s':>9} {'kernel overhead s':>18}")
        for label in ("fresh cache", "warm cache"):
            t = run_child(model, cache)
            print(f"{label:14} {t['import']:9.2f} {t['load']:8.2f} {t['first']:14.2f} {t['steady']:9.3f} "
                  f"{t['first'] - t['steady']:18.2f}")


if __name__ == "__main__":
    main()
