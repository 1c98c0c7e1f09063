"""CPU feature dispatch, decided once per process before Numba compiles anything.

Levels, lowest first:
    x86_64:  generic (SSE2)  <  avx2 (x86-64-v3: AVX2, FMA, F16C)  <  avx512 (x86-64-v4)  <  avx512vnni
             <  avx512bf16 (VNNI and BF16 dot products: Zen 4 and 5, Cooper Lake, Sapphire Rapids)
    aarch64: generic (NEON)  <  dotprod (NEON + sdot, e.g. Raspberry Pi 5)

`LLAMAFILE_CPU=<level>` (or the CLI's --cpu) forces a level at or below what the machine
has, so every path can be tested on one machine. Numba compiles for one CPU per process
(NUMBA_CPU_NAME / NUMBA_CPU_FEATURES), so `configure()` must run before numba is imported;
`import kernels` does that. Under qemu, LLVM sees a `generic` aarch64 CPU, so on ARM the
features come from the kernel's HWCAP bits, not from LLVM.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

X86_LEVELS = ("generic", "avx2", "avx512", "avx512vnni", "avx512bf16")
ARM_LEVELS = ("generic", "dotprod")

# What Numba/LLVM is told to compile for, per level.
_X86_TARGETS = {
    "generic": ("x86-64", ""),
    "avx2": ("haswell", ""),
    "avx512": ("skylake-avx512", ""),
    "avx512vnni": ("cascadelake", ""),
    "avx512bf16": ("cooperlake", ""),
}
_ARM_TARGETS = {"generic": ("cortex-a72", ""), "dotprod": ("cortex-a76", "")}

_HWCAP_ASIMDDP = 1 << 20  # aarch64 AT_HWCAP bit for the dot-product instructions
_AT_HWCAP = 16


def is_arm() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def levels() -> tuple[str, ...]:
    return ARM_LEVELS if is_arm() else X86_LEVELS


def _arm_hwcap() -> int:
    try:
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        return int(libc.getauxval(_AT_HWCAP))
    except (OSError, AttributeError):
        return 0


def detect() -> str:
    """The best level this machine runs."""
    if is_arm():
        return "dotprod" if _arm_hwcap() & _HWCAP_ASIMDDP else "generic"
    import llvmlite.binding as llvm  # llvmlite alone does not configure numba's target
    f = llvm.get_host_cpu_features()
    if all(f.get(k) for k in ("avx512f", "avx512bw", "avx512vl")):
        if f.get("avx512vnni"):
            return "avx512bf16" if f.get("avx512bf16") else "avx512vnni"
        return "avx512"
    if all(f.get(k) for k in ("avx2", "fma", "f16c")):
        return "avx2"
    return "generic"


class CPULevelError(ValueError):
    pass


def choose(requested: str | None) -> str:
    best = detect()
    if not requested or requested in ("native", "auto"):
        return best
    names = levels()
    if requested not in names:
        raise CPULevelError(f"unknown CPU level '{requested}' (this machine: {', '.join(names)})")
    if names.index(requested) > names.index(best):
        raise CPULevelError(f"CPU level '{requested}' is above what this CPU has ('{best}')")
    return requested


LEVEL: str | None = None


def configure(requested: str | None = None) -> str:
    """Pick the level (LLAMAFILE_CPU unless given) and point Numba at it. Idempotent."""
    global LEVEL
    if LEVEL is not None:
        return LEVEL
    level = choose(requested if requested is not None else os.environ.get("LLAMAFILE_CPU"))
    best = detect()
    if level != best or is_arm():  # the host's own CPU needs no override on x86
        name, features = (_ARM_TARGETS if is_arm() else _X86_TARGETS)[level]
        if "numba" in sys.modules and os.environ.get("NUMBA_CPU_NAME") != name:
            raise RuntimeError("kernels.cpu.configure() must run before numba is imported")
        os.environ["NUMBA_CPU_NAME"] = name
        os.environ["NUMBA_CPU_FEATURES"] = features
    LEVEL = level
    return level


def has(feature: str) -> bool:
    """Whether the chosen level includes a feature the kernels care about. "vbmi" (AVX512-VBMI: byte
    permutes across a whole register, Ice Lake and Zen 4 on) is no level of its own: the kernels use it
    only at the machine's own best level, where LLVM compiles for the host CPU itself."""
    level = LEVEL or configure()
    if feature == "vbmi":
        return _host_has_vbmi(level)
    order = levels()
    needs = {"avx2": "avx2", "avx512": "avx512", "vnni": "avx512vnni", "bf16": "avx512bf16", "dotprod": "dotprod"}[feature]
    return needs in order and order.index(level) >= order.index(needs)


def _host_has_vbmi(level: str) -> bool:
    if is_arm() or level != detect() or not level.startswith("avx512"):
        return False
    import llvmlite.binding as llvm
    return bool(llvm.get_host_cpu_features().get("avx512vbmi"))


def physical_cores() -> int:
    """Cores (not hyper-threads) this process may run on."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    try:
        for cpu_id in allowed:
            path = f"/sys/devices/system/cpu/cpu{cpu_id}/topology/thread_siblings_list"
            with open(path) as f:
                cores.add(f.read().strip())
    except OSError:
        return len(allowed)
    return max(1, len(cores))


def default_threads() -> int:
    """LLAMAFILE_THREADS, else NUMBA_NUM_THREADS, else the physical cores."""
    for var in ("LLAMAFILE_THREADS", "NUMBA_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return physical_cores()


def set_threads(n: int | None = None) -> int:
    """Use n threads for the kernels (default: default_threads()); returns the number in use."""
    import numba
    n = n or default_threads()
    n = max(1, min(n, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n
