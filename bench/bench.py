"""Prompt (pp) and decode (tg) speed against llama.cpp's, measured in one run, at depths.

    python bench/bench.py                          # the default files, 1 and 2 threads, pp128 tg64 at depth 0
    python bench/bench.py --models smollm2 --threads 2 --pp 128,512 --depth 0,4096
    python bench/bench.py --models qwen05 smollm2-q4_k_m llama-1b-q4_k_m   # llama.cpp-quantised files, shapes

For each file, thread count and depth (tokens already in the context when the prompt or the decoded tokens
come): our tok/s for each prompt size and for decoding; llama.cpp's, measured now through llama-cpp-python
(the bench extra, built for this CPU) with its runs interleaved with ours, or, without it, llama-bench's
figures from tests/reference/llamacpp_bench.json (another machine, depth 0 only; marked *); the ratio;
decode as a share of the memory-bandwidth roofline (decode's bytes of weights read per second / the read
bandwidth, the median of samples taken before each round of a row's runs and after the last); and our
peak RSS, alone in a fresh process, beside its bound (file + KV cache + 150 MB).
Absolute figures drift by +-30% on a shared machine (its memory bandwidth with them): read the ratios.
"""
from __future__ import annotations

import argparse
import json
import subprocess
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


class Engine:
    """Ours or llama.cpp's (llama-cpp-python) model, as the bench drives them: eval(ids) appends to the
    context, rewind(n) keeps its first n tokens (llama-cpp-python drops the rest at its next eval)."""

    def __init__(self, model, ours: bool):
        self.model, self.ours = model, ours

    def eval(self, ids):
        self.model.eval(ids)

    def rewind(self, n: int):
        if self.ours:
            self.model.truncate(n)
        else:
            self.model.n_tokens = n


def measure(engine: Engine, depth: int, prompt: list[int], pps: list[int], n_gen: int) -> list[float]:
    """tok/s of a pp-token prompt for each pp, then of n_gen decoded tokens, each after the same
    depth tokens (evaluated before: engine.rewind(depth) returns to them)."""
    out = []
    for pp in pps:
        engine.rewind(depth)
        out.append(pp / _timed(lambda: engine.eval(prompt[:pp])))
    engine.rewind(depth)
    engine.eval(prompt[:1])
    t0 = time.perf_counter()
    for i in range(n_gen):
        engine.eval([prompt[i + 1]])
    out.append(n_gen / (time.perf_counter() - t0))
    return out


def measure_side_by_side(engines: list[Engine], depth: int, pps: list[int], n_gen: int, repeats: int,
                         n_vocab: int, between=lambda: None) -> list[list[float]]:
    """Median figures (measure's) per engine, their runs interleaved so that drift hits them alike;
    between() is called before each round of runs and after the last."""
    rng = np.random.default_rng(0)
    prefix = rng.integers(100, n_vocab, depth).tolist()
    prompt = rng.integers(100, n_vocab, max(max(pps), n_gen + 1)).tolist()
    for engine in engines:  # the depth, once per engine; and a warm-up (and JIT, if the cache is cold)
        engine.rewind(0)
        if depth:
            engine.eval(prefix)
        engine.eval(prompt[:8])
        engine.rewind(depth)
        engine.eval(prompt[:1])
    runs = []
    for _ in range(repeats):
        between()
        runs.append([measure(engine, depth, prompt, pps, n_gen) for engine in engines])
    between()
    return [[float(np.median([run[i][k] for run in runs])) for k in range(len(pps) + 1)] for i in range(len(engines))]


def peak_rss(name: str, threads: int, n_ctx: int, depth: int, pp: int, n_gen: int) -> tuple[float, float]:
    """(peak RSS, bound) in bytes of our model alone in a fresh process evaluating depth + pp tokens, then
    decoding n_gen after the depth: the bound is the issue's, mapped weights (the file) + KV cache + 150 MB."""
    out = subprocess.run([sys.executable, __file__, "--rss-child", name, str(threads), str(n_ctx), str(depth), str(pp),
                          str(n_gen)], capture_output=True, text=True, check=True).stdout
    peak, bound = out.split()[-2:]
    return float(peak), float(bound)


def _rss_child(name: str, threads: str, n_ctx: str, depth: str, pp: str, n_gen: str) -> None:
    numba.set_num_threads(int(threads))
    path = bench_file(name)
    model = llamafile.load(path, n_ctx=int(n_ctx))
    depth, pp = int(depth), int(pp)
    ids = np.random.default_rng(0).integers(100, model.config.n_vocab, depth + max(pp, int(n_gen))).tolist()
    model.eval(ids[: depth + pp])
    model.truncate(depth)  # as measure() decodes: after depth tokens
    for t in ids[depth : depth + int(n_gen)]:
        model.eval([t])
    cache = model.cache
    kv = cache.k.nbytes + cache.v.nbytes + cache.kt.nbytes
    # VmHWM, not getrusage's ru_maxrss: that one starts from the forking parent's size and survives exec
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    print(int(hwm.split()[1]) * 1024, path.stat().st_size + kv + 150e6)


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
    if sys.argv[1:2] == ["--rss-child"]:
        return _rss_child(*sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=VARIANTS)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--pp", default="128", help="prompt sizes, e.g. 128,512")
    p.add_argument("--tg", type=int, default=64)
    p.add_argument("--depth", default="0", help="tokens already in the context, e.g. 0,4096")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-live", action="store_true", help="do not run llama.cpp even if llama-cpp-python is installed")
    p.add_argument("--no-rss", action="store_true", help="do not measure our peak RSS (a separate process per row)")
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    pps = [int(n) for n in args.pp.split(",")]
    depths = [int(d) for d in args.depth.split(",")]
    ref = llamacpp_figures()
    print(f"CPU level {kernels.cpu.LEVEL}. llama.cpp: measured in this run through llama-cpp-python, interleaved "
          f"with ours (when installed; else llama-bench's figures in {REFERENCE.name}, marked *). Memory read "
          "bandwidth: the median of samples taken between a row's runs; roofline = decode bytes/s / that "
          "bandwidth. Peak RSS: ours alone in a fresh process; bound = file + KV cache + 150 MB.")
    print()
    head = [f"pp{n}" for n in pps] + [f"tg{args.tg}"]
    print("| model | threads | depth | " + " | ".join(f"{h} tok/s | llama.cpp | ratio" for h in head)
          + " | bandwidth | roofline | peak RSS | bound |")
    print("|---|---|---|" + "---|---|---|" * len(head) + "---|---|---|---|")
    for name in args.models:
        path = bench_file(name)
        n_ctx = max(depths) + max(max(pps), args.tg + 1) + 16
        model = llamafile.load(path, n_ctx=n_ctx)
        bytes_per_token = weight_bytes_per_token(model)
        for t in threads:
            numba.set_num_threads(t)
            theirs = live_llamacpp(path, t, n_ctx) if not args.no_live else None
            engines = [Engine(model, True)] + ([Engine(theirs, False)] if theirs else [])
            for depth in depths:
                # the machine's bandwidth drifts (another tenant): sampled before each round of runs and
                # after the last, the row's figure is their median
                samples = []
                results = measure_side_by_side(engines, depth, pps, args.tg, args.repeats, model.config.n_vocab,
                                               between=lambda: samples.append(memory_bandwidth(t, gib=0.25)))
                bandwidth = float(np.median(samples))
                ours = results[0]
                if theirs:
                    other, mark = results[1], ""
                else:
                    other = [ref.get((path.name, t, "pp"), nan) if h == "pp128" and not depth else
                             ref.get((path.name, t, "tg"), nan) if h.startswith("tg") and not depth else nan for h in head]
                    mark = "*"
                cells = " | ".join(f"{a:.0f} | {b:.0f}{mark} | {a / b:.2f}" for a, b in zip(ours, other))
                roof = ours[-1] * bytes_per_token / bandwidth
                rss = "– | –"
                if not args.no_rss:
                    peak, bound = peak_rss(name, t, n_ctx, depth, max(pps), args.tg)
                    rss = f"{peak / 1e6:.0f} MB | {bound / 1e6:.0f} MB"
                print(f"| {name} | {t} | {depth} | {cells} | {bandwidth / 1e9:.0f} GB/s | {roof:.0%} | {rss} |", flush=True)
            del engines, theirs


nan = float("nan")


if __name__ == "__main__":
    main()
