"""Make f32/f16/bf16/q8_0/q4_0 variants of a GGUF model with the `gguf` package.

A port of ../shared/reference/make_variants.py (same gguf calls in the same order, so the output
is byte-identical to the reference): every tensor with two or more dimensions is dequantised and
re-quantised to the target type; 1-D tensors stay F32; all metadata is copied and
general.file_type is updated.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFReader, GGUFValueType as V, GGUFWriter, LlamaFileType as F
from gguf.quants import dequantize, quantize

TARGETS = {"f32": (T.F32, F.ALL_F32), "f16": (T.F16, F.MOSTLY_F16), "bf16": (T.BF16, F.MOSTLY_BF16),
           "q8_0": (T.Q8_0, F.MOSTLY_Q8_0), "q4_0": (T.Q4_0, F.MOSTLY_Q4_0)}


def _convert(src: Path, dst: Path, qtype: T, ftype: F) -> None:
    """Exactly the reference's convert()."""
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        if field.name == "general.file_type":
            writer.add_file_type(int(ftype))
            continue
        sub = field.types[-1] if field.types[0] == V.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)  # (rows, n_per_row)
        if len(t.shape) < 2 or qtype == T.F32:
            writer.add_tensor(t.name, w)
        elif qtype == T.F16:
            writer.add_tensor(t.name, w.astype(np.float16))
        else:
            writer.add_tensor(t.name, quantize(w, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make_variant(src: Path, dst: Path, variant_type: str) -> None:
    """Write the `variant_type` version of GGUF file `src` to `dst` (atomically: temp file, then rename)."""
    if variant_type not in TARGETS:
        raise ValueError(f"unknown variant type '{variant_type}' (one of {', '.join(TARGETS)})")
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")  # created by GGUFWriter: the usual umask applies
    try:
        _convert(src, tmp, *TARGETS[variant_type])
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
