"""Tokenizer speed: tokenize 1 MiB of text with a model's vocabulary (SmolLM2 by default; goal <= 2 s).

    python bench/tokenize_speed.py [MODEL_OR_GGUF] [--mib N]

The text is English prose, code and a little of other scripts, repeated with numbers that change, so
the word cache does not see only one paragraph. Prints the load time, seconds per MiB (best of 3,
a fresh tokenizer each time: cold word cache) and the ids per second.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SAMPLE = """The quick brown fox jumps over the lazy dog {n} times; it's not what they'd expected.
    def fibonacci(n: int) -> int:
        return n if n < 2 else fibonacci(n - 1) + fibonacci(n - {k})   # {n} calls
Il était une fois une forêt où vivaient {k} écureuils. Ünïcödé, naïve café, 中文字符 {n}, 日本語のテキスト.
Numbers like {n}.{k}, 3.14159 and 1,000,000 appear; so do URLs: https://example.com/path?q={n}&x={k}.
"""


def make_text(n_bytes: int) -> str:
    parts, size, i = [], 0, 0
    while size < n_bytes:
        p = SAMPLE.format(n=i * 7919 % 100003, k=i % 97)
        parts.append(p)
        size += len(p.encode("utf-8"))
        i += 1
    return "".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="smollm2")
    ap.add_argument("--mib", type=float, default=1.0)
    args = ap.parse_args()
    from llamafile.tokenizers import load_tokenizer
    path = Path(args.model)
    if not path.exists():
        from weights.fetch import fetch
        path = fetch(args.model)
    text = make_text(int(args.mib * (1 << 20)))
    t0 = time.perf_counter()
    load_tokenizer(path)
    load = time.perf_counter() - t0
    best, n_ids = None, 0
    for _ in range(3):
        tok = load_tokenizer(path)
        t0 = time.perf_counter()
        ids = tok.tokenize(text, add_special=True, parse_special=False)
        dt = time.perf_counter() - t0
        best, n_ids = min(best or dt, dt), len(ids)
    mib = len(text.encode("utf-8")) / (1 << 20)
    print(f"{path.name}: load {load:.2f} s; tokenize {mib:.2f} MiB -> {n_ids} ids in {best:.2f} s "
          f"= {best / mib:.2f} s/MiB, {n_ids / best / 1e6:.2f} M ids/s (goal <= 2 s/MiB)")


if __name__ == "__main__":
    main()
