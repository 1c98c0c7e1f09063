"""How this folder was made (README.md). Two steps, each run once, by hand:

  python tests/reference/archs/make.py describe MODELS_DIR_OR_FILE...
      Needs the models llama.cpp's test code made (the 40 in shared/reference/archs/models beside the
      checkout): adds their descriptions to models.json (every key/value and every tensor's name, shape
      and type), replacing those of the same name. Done once for the 40; the descriptions are what the
      repository keeps of those files. A new architecture's model is added the same way.

  python tests/reference/archs/make.py references [NAME...]
      Needs llama-cpp-python 0.3.36 (`pip install llama-cpp-python==0.3.36`, CPU build), nothing else:
      generates each model from models.json (tests/archs_models.py), writes SHA256SUMS, llama.cpp's
      logits/NAME.jsonl for the token ids already in that file (a new model: llama-dense's), and the
      table of Q in README.md.

The tests themselves need neither: tests/conftest.py's archs_model generates a model on first use and
checks it against SHA256SUMS.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TESTS = HERE.parents[1]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

QUANT_TYPES = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K", "IQ4_XS", "IQ4_NL", "Q5_0", "Q5_1")


def values_of(name: str) -> str:
    """The model whose values a model holds: the F32 and quantised llama/qwen3 models are the F16 one's."""
    family, _, rest = name.partition("-")
    return f"{family}-dense" if rest == "dense-f32" or rest in QUANT_TYPES else name


# --- describe: the models' key/values and tensor list, from llama.cpp's files ---

def _kv(field) -> list:
    types = [t.name for t in field.types]
    if types[0] == "ARRAY":
        return ["ARRAY", types[1], field.contents()]
    return [types[0], field.contents()]


def describe(paths: list[Path]) -> None:
    import gguf
    out = HERE / "models.json"
    models = {}
    if out.exists():  # the descriptions already there, each with all its keys
        old = json.loads(out.read_text())
        models = {name: {**m, "kv": {**old["common"], **m["kv"]}} for name, m in old["models"].items()}
    for path in [f for p in paths for f in (sorted(p.glob("*.gguf")) if p.is_dir() else [p])]:
        r = gguf.GGUFReader(path)
        assert r.alignment == 32, path
        arch = r.fields["general.architecture"].contents()
        kv = {}
        for key, field in r.fields.items():
            if not key.startswith("GGUF."):  # the header's own fields
                kv[key.replace(f"{arch}.", "{arch}.", 1) if key.startswith(f"{arch}.") else key] = _kv(field)
        tensors = [[t.name, [int(n) for n in t.shape], t.tensor_type.name] for t in r.tensors]
        models[path.stem] = {"values": values_of(path.stem), "kv": kv, "tensors": tensors}
    models = dict(sorted(models.items()))
    # the keys every model has (with the architecture's name as {arch}) are written once, with their most
    # frequent value; a model lists the keys it has beyond those, and those whose value differs
    common = {}
    for k in sorted(next(iter(models.values()))["kv"]):
        if all(k in m["kv"] for m in models.values()):
            seen = [json.dumps(m["kv"][k]) for m in models.values()]
            common[k] = json.loads(max(seen, key=seen.count))
    for m in models.values():
        m["kv"] = {k: v for k, v in sorted(m["kv"].items()) if common.get(k) != v}

    def dump(x) -> str:
        return json.dumps(x, ensure_ascii=False)
    lines = ['{"common": {']
    lines += [",\n".join(f"  {dump(k)}: {dump(v)}" for k, v in common.items()), '},', '"models": {']
    blocks = []
    for name, m in models.items():
        kv = "".join(f"\n    {dump(k)}: {dump(v)}," for k, v in m["kv"].items())[:-1]
        tensors = ",\n".join(f"    {dump(t)}" for t in m["tensors"])
        blocks.append(f'  {dump(name)}: {{"values": {dump(m["values"])},\n  "kv": {{{kv}}},\n'
                      f'  "tensors": [\n{tensors}]}}')
    lines += [",\n".join(blocks), "}}"]
    out.write_text("\n".join(lines) + "\n")
    assert json.loads(out.read_text())["models"].keys() == models.keys()
    print(f"{out}: {len(models)} models, {out.stat().st_size} bytes")


# --- references: llama.cpp's logits on the generated models ---

def _quiet_llama_cpp():
    import llama_cpp as L
    L.llama_backend_init()
    L.llama_log_set(_quiet_llama_cpp.callback, None)
    return L


_quiet_llama_cpp.callback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(lambda *a: None)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def llama_cpp_records(path: Path, sequences: list[list[int]], n_gen: int = 16, n_ctx: int = 256) -> list[dict]:
    """For each sequence, from an empty cache: llama.cpp's log-softmax at every position (one batch; CPU,
    1 thread, F16 KV cache, llama.cpp's default flash-attention choice), then n_gen greedy ids, each decoded
    alone, and the top-1 minus top-2 log-prob before each."""
    L = _quiet_llama_cpp()
    model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
    if not model:
        raise RuntimeError(f"llama.cpp cannot load {path}")
    params = L.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
    params.n_threads = params.n_threads_batch = 1
    params.type_k = params.type_v = 1  # GGML_TYPE_F16
    ctx = L.llama_init_from_model(model, params)
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    batch = L.llama_batch_init(n_ctx, 0, 1)

    def decode(ids: list[int], pos: int, every: bool) -> np.ndarray:
        batch.n_tokens = len(ids)
        for i, t in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, pos + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = every or i == len(ids) - 1
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError(f"llama_decode failed on {path}")
        rows = range(len(ids)) if every else [len(ids) - 1]
        return np.array([np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), (n_vocab,)) for i in rows])

    records = []
    try:
        for ids in sequences:
            L.llama_memory_clear(L.llama_get_memory(ctx), True)
            logprobs = log_softmax(decode(ids, 0, True))
            last, pos, gen, margins = logprobs[-1], len(ids), [], []
            for _ in range(n_gen):
                first, second = np.argsort(-last, kind="stable")[:2]
                gen.append(int(first))
                margins.append(float(last[first] - last[second]))
                last = log_softmax(decode([int(first)], pos, False))[0]
                pos += 1
            records.append({"ids": list(ids), "logprobs": logprobs, "gen": gen, "margins": margins})
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)
    return records


def record_line(r: dict) -> str:
    """One JSON line, floats with 6 decimals (as the files have always been written)."""
    def floats(xs):
        return "[" + ",".join(f"{x:.6f}" for x in xs) + "]"
    return (f'{{"ids":{json.dumps(r["ids"], separators=(",", ":"))},'
            f'"logprobs":[{",".join(floats(row) for row in r["logprobs"])}],'
            f'"gen":{json.dumps(r["gen"], separators=(",", ":"))},"margins":{floats(r["margins"])}}}')


def read_records(name: str) -> list[dict]:
    with open(HERE / "logits" / f"{name}.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=-1, keepdims=True)


def nmse(ours: list, ref: list) -> float:
    """The tests' measure (tests/test_archs.py): centred log-probs, over all positions of all sequences."""
    ours, ref = [centred(np.asarray(a, np.float64)) for a in ours], [centred(np.asarray(b, np.float64)) for b in ref]
    return sum(float(((a - b) ** 2).sum()) for a, b in zip(ours, ref)) / sum(float((b ** 2).sum()) for b in ref)


def references(selected: list[str]) -> None:
    import time

    import archs_models
    names = selected or archs_models.names()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        digests = {n: archs_models.sha256(archs_models.build(n, folder, check=False)) for n in archs_models.names()}
        print(f"generated {len(digests)} models in {time.perf_counter() - t0:.1f} s")
        (HERE / "SHA256SUMS").write_text("".join(f"{digests[n]}  {n}.gguf\n" for n in sorted(digests)))
        for name in names:
            known = (HERE / "logits" / f"{name}.jsonl").exists()  # a new model takes llama-dense's ids
            sequences = [r["ids"] for r in read_records(name if known else "llama-dense")]
            records = llama_cpp_records(folder / f"{name}.gguf", sequences)
            (HERE / "logits" / f"{name}.jsonl").write_text("".join(record_line(r) + "\n" for r in records))
            print(f"{name}: {[len(s) for s in sequences]} ids")
    # Q: llama.cpp's quantised result against its F32 result, over the written (rounded) log-probs
    q = {}
    for family in ("llama", "qwen3"):
        f32 = [r["logprobs"] for r in read_records(f"{family}-dense-f32")]
        for qtype in QUANT_TYPES:
            name = f"{family}-{qtype}"
            q[name] = nmse([r["logprobs"] for r in read_records(name)], f32)
    readme = HERE / "README.md"
    text, n = re.subn(r"^\| ([\w-]+) \| [0-9.e+-]+ \|$", lambda m: f"| {m[1]} | {q[m[1]]:.2e} |",
                      readme.read_text(), flags=re.M)
    assert n == len(q), f"README.md has {n} rows of Q, not {len(q)}"
    readme.write_text(text)
    for name in sorted(q):
        print(f"| {name} | {q[name]:.2e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("describe").add_argument("paths", type=Path, nargs="+")
    sub.add_parser("references").add_argument("names", nargs="*")
    args = parser.parse_args()
    if args.step == "describe":
        describe(args.paths)
    else:
        references(args.names)


if __name__ == "__main__":
    main()
