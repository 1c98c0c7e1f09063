"""What constrained decoding (llguidance, llamafile/server/grammar.py) costs per token on SmolLM2.

    python bench/grammar.py [MODEL] [-n TOKENS] [--reps R]

Decodes the same prompt greedily with and without a constraint, runs interleaved, best of R,
and prints tokens per second for each and the slowdown; also the time the constraint itself
takes per token (mask, apply, advance), which the shared machine's noise affects less, as a share
of this run's token and of a 5 ms one (SmolLM2's decode at 2 threads on a quiet machine, README).
The goal (issue 13) is at most 20% of decode speed. Constraints: a JSON schema (an open
array of strings, so the reply never has to end) and a GBNF grammar.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCHEMA = {"response_format": {"type": "json_schema", "json_schema": {"schema": {
    "type": "array", "items": {"type": "string"}}}}}
GBNF = {"grammar": 'root ::= word (" " word)*\nword ::= [a-z]+'}
PROMPT = "<|im_start|>user\nList some fruits as a JSON array of strings.<|im_end|>\n<|im_start|>assistant\n"


class Timed:
    """The constraint with a stopwatch around it."""

    def __init__(self, constrained):
        self.c, self.seconds, self.calls = constrained, 0.0, 0
        self.accept, self.reset = constrained.accept, constrained.reset
        inner = constrained.inner
        self._inner_seconds = 0.0

        def timed_inner(logits):
            t = time.perf_counter()
            out = inner(logits)
            self._inner_seconds += time.perf_counter() - t
            return out
        constrained.inner = timed_inner

    def __call__(self, logits):
        t = time.perf_counter()
        inner_before = self._inner_seconds
        token = self.c(logits)
        self.seconds += (time.perf_counter() - t) - (self._inner_seconds - inner_before)
        self.calls += 1
        return token


def run(model, ids, n: int, fields: dict | None) -> tuple[float, float]:
    """(tokens per second, seconds in the constraint per token) for one greedy decode of n tokens."""
    from llamafile.generate import generate
    from llamafile.sampling import Sampler
    from llamafile.server.grammar import Constrained, compile_grammar, request_grammar

    sampler = Sampler(0.0)
    timed = None
    if fields is not None:
        matcher = compile_grammar(model.tokenizer, request_grammar(fields), model.config.n_vocab)
        sampler = timed = Timed(Constrained(sampler, matcher, model.config.n_vocab))
    model.reset()
    tokens = generate(model, ids, sampler, n, stop_at_eog=False)
    next(tokens)  # the prompt is not what is measured
    start, count = time.perf_counter(), 0
    for _ in tokens:
        count += 1
    elapsed = time.perf_counter() - start
    return count / elapsed, (timed.seconds / timed.calls if timed else 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="smollm2")
    p.add_argument("-n", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("-t", "--threads", type=int, default=1, help="decode threads (default 1: steadier on a shared machine)")
    args = p.parse_args()

    from kernels import cpu
    from llamafile.model import load
    cpu.set_threads(args.threads)
    from weights.fetch import fetch
    model = load(fetch(args.model, progress=True), n_ctx=512)
    ids = model.tokenize(PROMPT, add_special=True, parse_special=True)
    cases = {"none": None, "json schema": SCHEMA, "gbnf": GBNF}
    run(model, ids, 8, SCHEMA)  # compile and build the token table once
    best = {k: (0.0, float("inf")) for k in cases}
    for _ in range(args.reps):
        for name, fields in cases.items():
            speed, cost = run(model, ids, args.n, fields)
            best[name] = (max(best[name][0], speed), min(best[name][1], cost))
    base = best["none"][0]
    print(f"| constraint | tg{args.n} tok/s | slowdown | constraint per token | of this run's token | of a 5 ms token |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (speed, cost) in best.items():
        print(f"| {name} | {speed:.1f} | {100 * (1 - speed / base):+.1f}% | {1e3 * cost:.3f} ms | "
              f"{100 * cost * base:.1f}% | {100 * cost / 5e-3:.1f}% |")


if __name__ == "__main__":
    main()
