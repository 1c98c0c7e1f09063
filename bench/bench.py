"""Prompt (pp128) and decode (tg64) speed against llama.cpp's, measured in one run.

    python bench/bench.py                          # the six SmolLM2 files, 1 and 2 threads
    python bench/bench.py --models smollm2 --threads 2

For each file and thread count: our tok/s, llama.cpp's from ../shared/reference/llamacpp_bench.json
(llama-bench on this machine), the ratio, and decode as a fraction of the memory-bandwidth
roofline (bandwidth measured in this run / bytes of weights read per token). Absolute figures
drift ±20% on this shared machine: read the ratios.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import kernels  # noqa: E402,F401  (fixes the CPU level before numba loads)
import numba  # noqa: E402
import numpy as np  # noqa: E402

import llamafile  # noqa: E402
from weights.fetch import fetch  # noqa: E402

VARIANTS = ["smollm2", "smollm2-q8_0", "smollm2-q4_0", "smollm2-f16", "smollm2-bf16", "smollm2-f32"]
REFERENCE = REPO.parent / "shared" / "reference" / "llamacpp_bench.json"


@numba.njit(parallel=True, cache=True)
def _sum(a):
    total = 0
    for i in numba.prange(a.shape[0]):
        total += a[i]
    return total


def memory_bandwidth(threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """Read bandwidth in bytes/s: the best of several sums over a large int64 array."""
    numba.set_num_threads(threads)
    a = np.ones(int(gib * (1 << 30)) // 8, dtype=np.int64)
    _sum(a)
    best = min(_timed(lambda: _sum(a)) for _ in range(repeats))
    return a.nbytes / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def weight_bytes_per_token(model) -> int:
    """Bytes of the matrices one decoded token reads: every block matrix and the output."""
    net = model.net
    total = sum(t.nbytes for b in net.blocks for t in (b.wq, b.wk, b.wv, b.wo, b.gate, b.up, b.down))
    return total + net.output.nbytes


def measure(model, n_prompt: int, n_gen: int, repeats: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, model.config.n_vocab, n_prompt).tolist()
    model.reset()
    model.eval(prompt[:8])  # warm-up (and JIT, if the cache is cold)
    model.eval([1])
    pp, tg = [], []
    for _ in range(repeats):
        model.reset()
        pp.append(n_prompt / _timed(lambda: model.eval(prompt)))
        model.reset()
        model.eval([1])
        t0 = time.perf_counter()
        for i in range(n_gen):
            model.eval([prompt[i]])
        tg.append(n_gen / (time.perf_counter() - t0))
    return float(np.median(pp)), float(np.median(tg))


def llamacpp_figures() -> dict:
    """(file name, threads, 'pp'|'tg') -> tok/s from llama-bench's JSON."""
    out = {}
    for rec in json.loads(REFERENCE.read_text()):
        kind = "pp" if rec["n_prompt"] else "tg"
        out[(rec["model_filename"], rec["n_threads"], kind)] = rec["avg_ts"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=VARIANTS)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--pp", type=int, default=128)
    p.add_argument("--tg", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    ref = llamacpp_figures()
    bandwidth = {t: memory_bandwidth(t) for t in threads}
    print(f"CPU level {kernels.cpu.LEVEL}; memory read bandwidth: "
          + ", ".join(f"{t} thread{'s' if t > 1 else ''} {bw / 1e9:.1f} GB/s" for t, bw in bandwidth.items()))
    print()
    print("| model | threads | pp128 tok/s | llama.cpp | ratio | tg64 tok/s | llama.cpp | ratio | roofline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        path = fetch(name, progress=False)
        model = llamafile.load(path, n_ctx=args.pp + args.tg + 16)
        bytes_per_token = weight_bytes_per_token(model)
        for t in threads:
            numba.set_num_threads(t)
            pp, tg = measure(model, args.pp, args.tg, args.repeats)
            ref_pp, ref_tg = ref.get((path.name, t, "pp")), ref.get((path.name, t, "tg"))
            roof = tg * bytes_per_token / bandwidth[t]
            print(f"| {name} | {t} | {pp:.0f} | {ref_pp or float('nan'):.0f} | {pp / ref_pp if ref_pp else float('nan'):.2f} "
                  f"| {tg:.0f} | {ref_tg or float('nan'):.0f} | {tg / ref_tg if ref_tg else float('nan'):.2f} | {roof:.0%} |",
                  flush=True)


if __name__ == "__main__":
    main()
