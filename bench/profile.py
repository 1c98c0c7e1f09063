"""Where the time of a decoded token and of a prompt goes: matmuls by tensor, attention, norms,
rope, the rest of the step list, sampling, and Python around it.

    python bench/profile.py smollm2-q8_0 llama-1b-q4_k_m --threads 2
    python bench/profile.py qwen05 --threads 1 --cpu    # CPU time: the same on a busy machine

Every backend call is timed (the backend is wrapped, the model is not changed). The one-call decode
(llamafile/models/fused.py) runs every block inside Numba, where nothing can be timed from
outside, so the per-step decode profile is taken on the step-by-step path, and the fused
decode's own time per token is printed beside it: the gap between the two is what running the
blocks in one call saves. Names are bench.py's (catalogue models, llama.cpp-quantised variants,
bench/shapes.py shapes).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import kernels  # noqa: E402,F401
import numba  # noqa: E402
import numpy as np  # noqa: E402

import llamafile  # noqa: E402
from bench import bench_file  # noqa: E402
from llamafile.sampling import Sampler, SamplingParams  # noqa: E402


clock = time.perf_counter  # --cpu: time.process_time, which a busy second core does not inflate (1 thread)


class Timed:
    """Wraps a backend: every public method call adds its time under a name (matmuls by tensor kind)."""

    def __init__(self, backend):
        self.backend, self.times, self.calls = backend, defaultdict(float), defaultdict(int)

    def __getattr__(self, name):
        f = getattr(self.backend, name)
        if name.startswith("_") or not callable(f):
            return f

        def timed(*args, **kwargs):
            t0 = clock()
            out = f(*args, **kwargs)
            key = name
            if name == "matmul" and hasattr(args[0], "name"):
                key = "matmul " + re.sub(r"^blk\.\d+\.", "", args[0].name).removesuffix(".weight")
            self.times[key] += clock() - t0
            self.calls[key] += 1
            return out
        return timed

    def reset(self):
        self.times.clear()
        self.calls.clear()


def _table(title: str, times: dict, total: float, per: int) -> None:
    print(f"\n{title}: {total / per * 1e3:.2f} ms per token")
    print("| step | ms/token | share |")
    print("|---|---|---|")
    rest = total - sum(times.values())
    for key, t in sorted(times.items(), key=lambda kv: -kv[1]) + [("Python and the rest", rest)]:
        print(f"| {key} | {t / per * 1e3:.3f} | {t / total:.1%} |")


def profile(name: str, threads: int, n_prompt: int, n_decode: int) -> None:
    path = bench_file(name)
    model = llamafile.load(path, n_ctx=n_prompt + 2 * n_decode + 16)
    numba.set_num_threads(threads)
    net = model.net
    timed = Timed(net.backend)
    rng = np.random.default_rng(0)
    prompt = rng.integers(10, model.config.n_vocab, n_prompt).tolist()
    decoded = rng.integers(10, model.config.n_vocab, n_decode).tolist()   # fed one at a time

    model.reset()
    model.eval(prompt[:16])                              # compile (or load the cache)
    model.eval([1])
    net.backend = timed                                  # the step list calls the backend through net
    fused = getattr(net, "fuse_decode", False)

    model.reset()
    timed.reset()
    t0 = clock()
    model.eval(prompt)
    _table(f"{name}, {threads} threads: prompt of {n_prompt}", dict(timed.times), clock() - t0, n_prompt)

    if fused:
        net.fuse_decode = False
    timed.reset()
    t0 = clock()
    for i in range(n_decode):
        model.eval([decoded[i]])
    _table(f"{name}, {threads} threads: decode, step by step (depth {n_prompt})", dict(timed.times),
           clock() - t0, n_decode)
    if fused:
        net.fuse_decode = True
        one_call = getattr(net, "_fused", None)
        if one_call is not None:
            def blocks(*args):
                t0 = clock()
                one_call(*args)
                timed.times["every block (one Numba call)"] += clock() - t0
            net._fused = blocks
        timed.reset()
        t0 = clock()
        for i in range(n_decode):
            model.eval([decoded[i]])
        total = clock() - t0
        _table(f"{name}, {threads} threads: decode, blocks in one call (fused.py)", dict(timed.times), total, n_decode)
        if one_call is not None:
            net._fused = one_call

    logits = model.state.logits[0] if hasattr(model, "state") else rng.standard_normal(model.config.n_vocab)
    sampler = Sampler(SamplingParams(seed=0))                    # llama.cpp's default chain
    t0 = clock()
    for _ in range(20):
        sampler(np.asarray(logits, np.float32))
    print(f"\nsampling (default chain, {model.config.n_vocab} tokens): {(clock() - t0) / 20 * 1e3:.2f} ms per token")
    net.backend = timed.backend


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--cpu", action="store_true", help="CPU time of this process instead of the wall clock: "
                   "stable on a busy machine, and the same thing at 1 thread")
    args = p.parse_args()
    if args.cpu:
        global clock
        clock = time.process_time
    for name in args.models:
        profile(name, args.threads, args.prompt, args.decode)


if __name__ == "__main__":
    main()
