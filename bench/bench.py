"""Prompt (pp128) and decode (tg64) speed against llama.cpp's, measured in one run.

    python bench/bench.py                          # the six SmolLM2 files, 1 and 2 threads
    python bench/bench.py --models smollm2 --threads 2
    python bench/bench.py --models qwen05 smollm2-q4_k_m   # llama.cpp-quantised files (the bench extra)

For each file and thread count: our tok/s, llama.cpp's from ../shared/reference/llamacpp_bench.json
(llama-bench on this machine) and the ratio; if llama-cpp-python is installed
(`pip install llama-cpp-python`, built for this CPU), llama.cpp's speed measured now, its runs
interleaved with ours, and that ratio; and decode as a fraction of the memory-bandwidth roofline
(bandwidth measured before each row / bytes of weights read per token). Absolute figures drift
by ±30% on this shared machine (its memory bandwidth with them): read the ratios, the live ones
first.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import kernels  # noqa: E402,F401  (fixes the CPU level before numba loads)
import numba  # noqa: E402
import numpy as np  # noqa: E402

import llamafile  # noqa: E402
from weights.fetch import fetch  # noqa: E402

VARIANTS = ["smollm2", "smollm2-q8_0", "smollm2-q4_0", "smollm2-f16", "smollm2-bf16", "smollm2-f32",
            "qwen05", "gemma3-270m", "smollm2-q4_k_m"]
# "<catalogue model>-<type>": made from the model's f32 variant by llama.cpp's own quantiser
# (llama-cpp-python, the bench extra), into the cache's bench/ folder; never committed.
LLAMA_FTYPES = {"q4_k_m": 15, "q4_k_s": 14, "q5_k_m": 17, "q6_k": 18, "q3_k_m": 12, "q2_k": 10,
                "q5_0": 8, "q5_1": 9, "iq4_nl": 25, "iq4_xs": 30}
REFERENCE = REPO / "tests" / "reference" / "llamacpp_bench.json"  # llama-bench on the Zen 5 host of 2026-11-24


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
    total = sum(t.nbytes for t in net.matrices)
    return total + net.output.nbytes


def measure(model, prompt: list[int], n_gen: int) -> tuple[float, float]:
    """One pp and one tg figure (tok/s) for anything with reset() and eval(ids): ours or llama.cpp's."""
    model.reset()
    pp = len(prompt) / _timed(lambda: model.eval(prompt))
    model.reset()
    model.eval([1])
    t0 = time.perf_counter()
    for i in range(n_gen):
        model.eval([prompt[i]])
    return pp, n_gen / (time.perf_counter() - t0)


def measure_side_by_side(models: list, n_prompt: int, n_gen: int, repeats: int, n_vocab: int) -> list:
    """Median (pp, tg) per model, their runs interleaved so that drift hits them alike."""
    prompt = np.random.default_rng(0).integers(100, n_vocab, n_prompt).tolist()
    for model in models:  # warm-up (and JIT, if the cache is cold)
        model.reset()
        model.eval(prompt[:8])
        model.eval([1])
    runs = [[measure(model, prompt, n_gen) for model in models] for _ in range(repeats)]
    return [tuple(float(np.median([run[i][k] for run in runs])) for k in (0, 1)) for i in range(len(models))]


def live_llamacpp(path: Path, threads: int, n_ctx: int):
    """llama.cpp itself through llama-cpp-python, when it is installed (else None): its own speed now,
    on this machine, so the ratio does not depend on how busy the machine was when the reference ran."""
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    return llm


def bench_file(name: str) -> Path:
    """The catalogue's file, or one llama.cpp quantises for the bench (see LLAMA_FTYPES)."""
    base, _, kind = name.rpartition("-")
    import shapes  # bench/shapes.py: random weights with real models' dimensions
    if base in shapes.SHAPES:
        return shapes.model_file(name)
    if kind not in LLAMA_FTYPES:
        return fetch(name, progress=False)
    import ctypes

    import llama_cpp  # the bench extra
    from weights.fetch import cache_dir
    dst = cache_dir() / "bench" / f"{name}.gguf"
    if not dst.exists():
        src = fetch(f"{base}-f32", progress=False)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".partial")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = LLAMA_FTYPES[kind]
        params.nthread = 2
        if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"llama_model_quantize failed for {name}")
        tmp.replace(dst)
    return dst


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
    p.add_argument("--no-live", action="store_true", help="do not run llama.cpp even if llama-cpp-python is installed")
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    ref = llamacpp_figures()
    print(f"CPU level {kernels.cpu.LEVEL}. ref: llama-bench's figures in {REFERENCE.name}; live: llama.cpp through "
          "llama-cpp-python in this run, interleaved with ours (when installed). Memory read bandwidth is measured "
          "before each row; roofline = decode bytes/s / that bandwidth.")
    print()
    print("| model | threads | pp128 tok/s | ref | ratio | live | ratio | tg64 tok/s | ref | ratio | live | ratio "
          "| bandwidth | roofline |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for name in args.models:
        path = bench_file(name)
        n_ctx = args.pp + args.tg + 16
        model = llamafile.load(path, n_ctx=n_ctx)
        bytes_per_token = weight_bytes_per_token(model)
        for t in threads:
            bandwidth = memory_bandwidth(t, gib=0.25)
            numba.set_num_threads(t)
            theirs = live_llamacpp(path, t, n_ctx) if not args.no_live else None
            results = measure_side_by_side([model] + ([theirs] if theirs else []), args.pp, args.tg, args.repeats,
                                           model.config.n_vocab)
            (pp, tg), (live_pp, live_tg) = results[0], (results[1] if theirs else (nan, nan))
            ref_pp, ref_tg = ref.get((path.name, t, "pp"), nan), ref.get((path.name, t, "tg"), nan)
            roof = tg * bytes_per_token / bandwidth
            print(f"| {name} | {t} | {pp:.0f} | {ref_pp:.0f} | {pp / ref_pp:.2f} | {live_pp:.0f} | {pp / live_pp:.2f} "
                  f"| {tg:.0f} | {ref_tg:.0f} | {tg / ref_tg:.2f} | {live_tg:.0f} | {tg / live_tg:.2f} "
                  f"| {bandwidth / 1e9:.0f} GB/s | {roof:.0%} |", flush=True)
            del theirs

if __name__ == "__main__":
    main()
