"""Matrix products against weights read in place from the mapped file, one per format.

    out[t, r] = sum_k W[r, k] * x[t, k]      W: (rows, row_bytes) raw blocks, x: (n, k), out: (n, rows)

One driver per kind (quantised, VNNI panels, float), specialised per format by the tiles it calls
(a token's rows, a few tokens', a prompt's): kernels.quant builds them from the format's decoder
(kernels.blocks), kernels.simd has the float ones. Every path reaches a format through the registries
below, keyed by GGML type. Threads split the rows into fixed tiles; every output element is summed by
one thread, and every kernel sums it in the same order (kernels.quant's "arithmetic"), so the result
depends neither on the thread count nor on the batch a token is in. Quantised formats first quantise
x to 8 bits per block of 32 (`quantize_q8`, as llama.cpp does) and multiply in integers.

The definitions these are tested against: x @ weights.quants.dequantize(W).T.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T
from llvmlite import ir
from numba import njit, prange, types
from numba.core import errors
from numba.extending import intrinsic

from . import panels, quant, simd
from .blocks import FORMATS
from .ops import SERIAL_BELOW

ROWS_PER_TILE = 16  # rows one thread takes at a time: the tile's weights stay in L1 across tokens
PANEL_MIN = 16      # tokens: from here on quantised matmuls use kernels.panels where the CPU has VNNI


@njit(cache=True, inline="always")
def _round_to_f16(x):
    return simd.half_to_float(simd.float_to_half(x))


@njit(cache=True, error_model="numpy")
def quantize_q8_serial(x, xq, xd, xs, xsum4):
    """x: (n, k) float32 -> xq: (n, k) int8, xd: (n, k/32) scales, xs: (n, k/32) = xd * sum(xq)
    rounded to a half (llama.cpp's q8_1), xsum4: (n, k/4) int32 = sums of 4 adjacent xq (what
    one int32 lane of an integer dot product sums: Q4_0 subtracts 8 times them).

    llama.cpp's q8_0/q8_1 activations: d = max|x| / 127 stored as f16, q = round(x / d).
    """
    n, k = x.shape
    for t in range(n):
        for b in range(k // 32):
            amax = np.float32(0.0)
            for j in range(b * 32, b * 32 + 32):
                amax = max(amax, abs(x[t, j]))
            d = amax / np.float32(127.0)
            inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)   # as llama.cpp: 127/amax, not 1/d
            total = 0
            for j in range(b * 32, b * 32 + 32):
                q = np.int8(np.round(x[t, j] * inv))
                xq[t, j] = q
                total += q
            for j in range(b * 8, b * 8 + 8):
                xsum4[t, j] = np.int32(xq[t, 4 * j]) + xq[t, 4 * j + 1] + xq[t, 4 * j + 2] + xq[t, 4 * j + 3]
            xd[t, b] = _round_to_f16(d)
            xs[t, b] = _round_to_f16(d * np.float32(total))


@njit(cache=True, error_model="numpy")
def quantize_q8_k_serial(x, xq, xd, xs, xsum4):
    """As quantize_q8_serial, the way llama.cpp quantises activations for K-quant weights (q8_K): one scale
    per 256, d = max / -127 for the x of largest magnitude (float32, not a half), q = round(x / d) capped
    at 127. xd holds d for each of the block's 8 chunks, xs = d * sum(xq) per chunk (exact, not a half)."""
    n, k = x.shape
    for t in range(n):
        for b in range(k // 256):
            amax, top = np.float32(0.0), np.float32(0.0)
            for j in range(b * 256, b * 256 + 256):
                if abs(x[t, j]) > amax:
                    amax, top = abs(x[t, j]), x[t, j]
            iscale = np.float32(-127.0) / top if amax > 0 else np.float32(0.0)
            d = np.float32(1.0) / iscale if amax > 0 else np.float32(0.0)
            for c in range(b * 8, b * 8 + 8):
                total = 0
                for j in range(c * 32, c * 32 + 32):
                    q = np.int8(min(np.float32(127.0), np.round(iscale * x[t, j])))
                    xq[t, j] = q
                    total += q
                for j in range(c * 8, c * 8 + 8):
                    xsum4[t, j] = np.int32(xq[t, 4 * j]) + xq[t, 4 * j + 1] + xq[t, 4 * j + 2] + xq[t, 4 * j + 3]
                xd[t, c] = d
                xs[t, c] = d * np.float32(total)


# The same with the tokens across threads, for a batch. Each token is the serial kernel called on its
# row: the same code and results, and a parfor this small compiles in under a second, where one
# around the loops above took five to seven (the slowest kernel of a first run).
@njit(cache=True, parallel=True)
def quantize_q8(x, xq, xd, xs, xsum4):
    for t in prange(x.shape[0]):
        quantize_q8_serial(x[t : t + 1], xq[t : t + 1], xd[t : t + 1], xs[t : t + 1], xsum4[t : t + 1])


@njit(cache=True, parallel=True)
def quantize_q8_k(x, xq, xd, xs, xsum4):
    for t in prange(x.shape[0]):
        quantize_q8_k_serial(x[t : t + 1], xq[t : t + 1], xd[t : t + 1], xs[t : t + 1], xsum4[t : t + 1])


# How each kind of activations is made (kernels.blocks.Decoder.activations names the kind a format takes),
# in parallel for a batch, on the calling thread for a token or two (as kernels.ops' row-wise kernels).
QUANTIZE = {"q8_0": quantize_q8, "q8_k": quantize_q8_k}
QUANTIZE_SERIAL = {"q8_0": quantize_q8_serial, "q8_k": quantize_q8_k_serial}


def _quant_matmul(code, R, T):
    @njit(cache=True, parallel=True)
    def matmul(w, xq, xd, xs, xsum4, out):
        rows, n = w.shape[0], xq.shape[0]
        if n < T:  # decoding, or a few tokens: a token at a time
            for tile_r in prange((rows + ROWS_PER_TILE - 1) // ROWS_PER_TILE):
                _quant_dots(code, w, tile_r * ROWS_PER_TILE, min(rows, (tile_r + 1) * ROWS_PER_TILE), 0, n,
                            xq, xd, xs, xsum4, out)
            return
        full_t = n - n % T
        for strip in prange((rows + R - 1) // R):  # a strip of R rows against every token
            r0 = strip * R
            if r0 + R <= rows:
                for t0 in range(0, full_t, T):
                    _quant_tile(code, w, r0, xq, xd, xs, xsum4, t0, out)
                _quant_dots(code, w, r0, r0 + R, full_t, n, xq, xd, xs, xsum4, out)
            else:
                _quant_dots(code, w, r0, rows, 0, n, xq, xd, xs, xsum4, out)
    return matmul


def _panel_matmul(code, R, G):
    @njit(cache=True, parallel=True)
    def matmul(w, xq, xd, xs, xsum4, xpanel, upanel, dpanel, spanel, sumpanel, out):
        rows, n = w.shape[0], xq.shape[0]
        groups = xpanel.shape[0]                 # a multiple of G, covering n tokens
        for strip in prange((rows + R - 1) // R):  # a strip of R rows against every group of tokens
            r0 = strip * R
            if r0 + R <= rows:
                for g0 in range(0, groups, G):
                    _panel_tile(code, w, r0, xpanel, upanel, dpanel, spanel, sumpanel, g0, out, n)
            else:
                _quant_dots(code, w, r0, rows, 0, n, xq, xd, xs, xsum4, out)
    return matmul


def _float_matmul(code, R, T):
    @njit(cache=True, parallel=True)
    def matmul(w, x, out, xb=None):
        """xb (BF16 with AVX512-BF16, ROUNDED): x rounded to bf16 once for the batch (BF16Activations), which
        a prompt's tiles read; fewer tokens than a tile read x. The same bits either way."""
        rows, n = w.shape[0], x.shape[0]
        if n < T:
            for tile_r in prange((rows + ROWS_PER_TILE - 1) // ROWS_PER_TILE):
                _float_rows(code, w, tile_r * ROWS_PER_TILE, min(rows, (tile_r + 1) * ROWS_PER_TILE), 0, n, x, out)
            return
        full_t = n - n % T
        for strip in prange((rows + R - 1) // R):
            r0 = strip * R
            if r0 + R <= rows:
                for t0 in range(0, full_t, T):
                    if xb is None:
                        _float_tile(code, w, r0, x, t0, out)
                    else:
                        _rounded_tile(code, w, r0, xb, t0, out)
                _float_rows(code, w, r0, r0 + R, full_t, n, x, out)
            else:
                _float_rows(code, w, r0, rows, 0, n, x, out)
    return matmul


# The drivers above close over a format's GGML type id (an int, not its functions: Numba's cache
# keys a closure by its captured values, and an int hashes the same in every process) and reach
# the format's row dot and tiles through the dispatch intrinsics below, built from the registry
# kernels.blocks.FORMATS (quantised) and FLOATS (float formats).
FLOATS = {T.F32: simd.TILES_F32, T.F16: simd.TILES_F16, T.BF16: simd.TILES_BF16}  # (prompt, rows, one row)
QUANT_DOTS = {t: quant.dots(fmt, quant.rows(t), 1) for t, fmt in FORMATS.items()}
QUANT_ROWS = tuple(quant.rows(t) for t in range(max(FORMATS) + 1))  # by GGML type id: QUANT_DOTS' rows
QUANT_DOT = {t: quant.dots(fmt, 1, 1) for t, fmt in FORMATS.items()}
QUANT_TILES = {t: quant.dots(fmt, *quant.TILE) for t, fmt in FORMATS.items()}


def _by_type(kernels: dict, what: str, arity: int):
    """A jittable f(code, a0, ..., a{arity-1}) calling kernels[code](a0, ...), every kernel an @intrinsic.
    code must be a compile-time constant (the drivers' closure value), so only that format's kernel is
    compiled into the caller. An intrinsic itself, so the kernel's code is emitted in place: an @overload
    is a call, which passes every array struct once per weight row (measured: 15% of a Q5_0 decode)."""
    def typed(typingctx, code, *args):
        if not isinstance(code, types.IntegerLiteral):
            raise errors.TypingError(f"{what}: the GGML type must be a compile-time constant")
        fnty = typingctx.resolve_value_type(kernels[T(code.literal_value)])
        sig = typingctx.resolve_function_type(fnty, args, {})

        def codegen(context, builder, signature, llargs):
            return context.get_function(fnty, sig)(builder, llargs[1:])
        return sig.return_type(code, *args), codegen

    # Numba's intrinsics take a fixed list of parameters (a *args one is lowered as a tuple)
    names = ", ".join(f"a{i}" for i in range(arity))
    scope = {"typed": typed}
    exec(f"def {what.replace(' ', '_')}(typingctx, code, {names}):\n    return typed(typingctx, code, {names})", scope)
    return intrinsic(prefer_literal=True)(scope[what.replace(" ", "_")])


_quant_rows = _by_type(QUANT_DOTS, "quantised dots", 8)
_quant_dot = _by_type(QUANT_DOT, "quantised dot", 8)
_quant_tile = _by_type(QUANT_TILES, "quantised tile", 8)
_panel_tile = _by_type(panels.TILES, "panel tile", 10)
_float_tile = _by_type({t: tiles[0] for t, tiles in FLOATS.items()}, "float tile", 5)
_rounded_tile = _by_type({T.BF16: simd.BF16_ROUNDED_TILE} if simd.HAS_BF16 else {}, "rounded tile", 5)
_float_row4 = _by_type({t: tiles[1] for t, tiles in FLOATS.items()}, "float rows", 5)
_float_row1 = _by_type({t: tiles[2] for t, tiles in FLOATS.items()}, "float row", 5)


@njit(cache=True, inline="always")
def _quant_dots(code, w, r_first, r_end, t_first, t_end, xq, xd, xs, xsum4, out):
    """out[t, r] for rows r_first..r_end-1 and tokens t_first..t_end-1, a token at a time: QUANT_ROWS[code] rows
    together, then one by one."""
    R = QUANT_ROWS[code]
    whole = r_first + (r_end - r_first) // R * R
    for t in range(t_first, t_end):
        for r in range(r_first, whole, R):
            _quant_rows(code, w, r, xq, xd, xs, xsum4, t, out)
        for r in range(whole, r_end):
            _quant_dot(code, w, r, xq, xd, xs, xsum4, t, out)


@njit(cache=True, inline="always")
def _float_rows(code, w, r_first, r_end, t_first, t_end, x, out):
    """out[t, r] for rows r_first..r_end-1 and tokens t_first..t_end-1, a token at a time, simd.FLOAT_ROWS rows
    together, then one by one."""
    whole = r_first + (r_end - r_first) // simd.FLOAT_ROWS * simd.FLOAT_ROWS
    for t in range(t_first, t_end):
        for r in range(r_first, whole, simd.FLOAT_ROWS):
            _float_row4(code, w, r, x, t, out)
        for r in range(whole, r_end):
            _float_row1(code, w, r, x, t, out)


@njit(cache=True, parallel=True)
def round_to_bf16(x, xb):
    """xb (n, k) uint16 = x (n, k) rounded to bf16, as the BF16 tiles round activations; k a multiple of 32."""
    for t in prange(x.shape[0]):
        for i in range(x.shape[1] // 32):
            simd.round_to_bf16(x, t, i, xb)


class BF16Activations:
    """Scratch for x rounded to bf16, allocated once for up to max_tokens rows of k: BF16 prompts with
    AVX512-BF16 round a batch once (kernels.simd.BF16_ROUNDED_TILE), not once per strip of rows."""
    panels = None

    def __init__(self, max_tokens: int, k: int):
        self.xb = np.empty((max_tokens, k), np.uint16)

    def fill(self, x: np.ndarray, kind: str = "bf16"):
        n = x.shape[0]
        if n >= simd.BF16_TILE[1]:  # decoding reads x itself
            round_to_bf16(x, self.xb[:n])
        return x, self.xb[:n]


QUANT_MATMUL = {t: _quant_matmul(int(t), *quant.TILE) for t in FORMATS}
FLOAT_MATMUL = {T.F32: _float_matmul(int(T.F32), *simd.FLOAT_TILE), T.F16: _float_matmul(int(T.F16), *simd.F16_TILE),
                T.BF16: _float_matmul(int(T.BF16), *simd.BF16_TILE)}
PANEL_MATMUL = {t: _panel_matmul(int(t), panels.ROWS, panels.GROUPS) for t in panels.TILES}
ROUNDED = frozenset({T.BF16} if simd.HAS_BF16 else ())  # float formats whose prompts read x prepared (xb)
SUPPORTED = frozenset(QUANT_MATMUL) | frozenset(FLOAT_MATMUL)


def activations(qtype: T) -> str | None:
    """The form of the activations a format's matmul reads besides x: 8-bit ones for a quantised type
    ("q8_0", "q8_k"), "bf16" for BF16 where the CPU has AVX512-BF16; None: x alone (FLOAT_MATMUL)."""
    if qtype in ROUNDED:
        return "bf16"
    return FORMATS[qtype].activations if qtype in FORMATS else None


def scratch(max_tokens: int, k: int, kind: str):
    """The scratch that prepares activations of a kind (activations()) for up to max_tokens rows of k."""
    return BF16Activations(max_tokens, k) if kind == "bf16" else Q8Activations(max_tokens, k)


def block_weights(qtype: T) -> int:
    """Weights per block: a kernel's row must be a whole number of them (and of 32)."""
    return FORMATS[qtype].weights if qtype in FORMATS else 32


class Q8Activations:
    """Scratch for x quantised to 8 bits: allocated once for up to max_tokens rows of k.

    With VNNI, a batch of PANEL_MIN tokens or more is also repacked into panels (kernels.panels).
    """

    def __init__(self, max_tokens: int, k: int):
        self.q = np.empty((max_tokens, k), np.int8)           # (n, k)
        self.d = np.empty((max_tokens, k // 32), np.float32)  # (n, k/32)
        self.s = np.empty((max_tokens, k // 32), np.float32)  # (n, k/32)
        self.sum4 = np.empty((max_tokens, k // 4), np.int32)  # (n, k/4)
        self._panels = None
        if panels.AVAILABLE and max_tokens >= PANEL_MIN:
            groups = _panel_groups(max_tokens)
            self._panels = (np.empty((groups, k // 4, panels.LANES), np.int32),     # xpanel
                            np.empty((groups, k // 4, panels.LANES), np.int32),     # upanel
                            np.empty((groups, k // 32, panels.LANES), np.float32),  # dpanel
                            np.empty((groups, k // 32, panels.LANES), np.float32),  # spanel
                            np.empty((groups, k // 16, panels.LANES), np.int32))    # sumpanel: per 16
        self.panels = None  # the last fill's panels, or None

    def fill(self, x: np.ndarray, kind: str = "q8_0"):
        """Quantise x (n, k) -> (q, d, s, sum4) views for n tokens, the arguments of the quantised matmuls;
        kind: "q8_0" (per 32) or "q8_k" (per 256, for K-quants), as llama.cpp pairs them with weights."""
        n = x.shape[0]
        parts = self.q[:n], self.d[:n], self.s[:n], self.sum4[:n]
        (QUANTIZE_SERIAL if n < SERIAL_BELOW else QUANTIZE)[kind](x, *parts)
        self.panels = None
        if self._panels is not None and n >= PANEL_MIN:
            self.panels = tuple(p[: _panel_groups(n)] for p in self._panels)
            panels.pack(*parts[:3], *self.panels)
        return parts


def _panel_groups(n: int) -> int:
    """Groups of 16 tokens covering n, rounded up to whole tiles."""
    per_tile = panels.LANES * panels.GROUPS
    return -(-n // per_tile) * panels.GROUPS


def prepared_matmul(qtype: T, w: np.ndarray, parts: tuple, panel: tuple | None, out: np.ndarray) -> np.ndarray:
    """out (n, rows) = x @ W.T from x's prepared parts (scratch(...).fill: 8-bit for a quantised type) and, if
    packed, its panels."""
    if qtype in ROUNDED:
        x, xb = parts
        FLOAT_MATMUL[qtype](w, x, out, xb)
    elif panel is not None:
        PANEL_MATMUL[qtype](w, *parts, *panel, out)
    else:
        QUANT_MATMUL[qtype](w, *parts, out)
    return out


def matmul(qtype: T, w: np.ndarray, x: np.ndarray, out: np.ndarray, q8: Q8Activations | None = None) -> np.ndarray:
    """out (n, rows) = x (n, k) @ W.T for W's raw rows (rows, row_bytes) of type qtype."""
    kind = activations(qtype)
    if kind is None:
        FLOAT_MATMUL[qtype](w, x, out)
        return out
    q8 = q8 or scratch(x.shape[0], x.shape[1], kind)
    parts = q8.fill(x, kind)
    return prepared_matmul(qtype, w, parts, q8.panels, out)


def types_mask(qtypes) -> int:
    """The set of GGML types a caller of `matvec` may meet, as one int (a compile-time constant there)."""
    return sum(1 << int(t) for t in set(qtypes))


@intrinsic(prefer_literal=True)
def matvec(typingctx, mask, code, w, x, xq, xd, xs, xsum4, out):
    """out (1, rows) = W x for weight rows w of GGML type `code`, known only at run time (a model's
    per-matrix types), among the types in `mask` (types_mask, a constant): a switch over their drivers,
    so a caller compiles only the formats its model has. Quantised types read x's 8-bit form."""
    if not isinstance(mask, types.IntegerLiteral):
        raise errors.TypingError("matvec: the types mask must be a compile-time constant")
    cases = []
    for t in sorted(SUPPORTED):
        if mask.literal_value >> int(t) & 1:
            driver = QUANT_MATMUL.get(t) or FLOAT_MATMUL[t]
            args = (w, xq, xd, xs, xsum4, out) if t in QUANT_MATMUL else (w, x, out)
            fnty = typingctx.resolve_value_type(driver)
            cases.append((t, fnty, typingctx.resolve_function_type(fnty, args, {}), t in QUANT_MATMUL))

    def codegen(context, builder, sig, llargs):
        _, code_v, w_v, x_v, xq_v, xd_v, xs_v, sum4_v, out_v = llargs
        done = builder.append_basic_block("matvec_done")
        switch = builder.switch(code_v, done)
        for t, fnty, s, quantised in cases:
            case = builder.append_basic_block(f"matvec_{t.name}")
            switch.add_case(ir.Constant(code_v.type, int(t)), case)
            builder.position_at_end(case)
            args = (w_v, xq_v, xd_v, xs_v, sum4_v, out_v) if quantised else (w_v, x_v, out_v)
            omitted = (context.get_dummy_value(),) * (len(s.args) - len(args))  # a float driver's xb, left out
            context.get_function(fnty, s)(builder, args + omitted)
            builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()
    return types.none(mask, code, w, x, xq, xd, xs, xsum4, out), codegen
