"""Numba compute kernels. Importing this package fixes the CPU level (see kernels.cpu)."""
from . import cache_locator, cpu, stale

cache_locator.install()  # frozen (one-file executable) only: Numba's cache in the user's cache dir
if not cache_locator.frozen():
    stale.drop_stale_caches()  # Numba's cache checks only each function's own file
cpu.configure()


def load_numba_without_scipy() -> None:
    """Import numba.np.arraymath with its BLAS check answered no. Numba's CPU target imports that module
    when it first starts, and the module asks, once, whether np.convolve may call a BLAS by importing
    scipy.linalg wherever SciPy is installed: about 30 MB of memory and 0.2-0.3 s that no kernel here
    needs (they use no BLAS). numba.np.linalg's own check, made when np.dot or np.linalg compile in
    jitted code, stays as it was."""
    import sys

    if "numba.np.arraymath" in sys.modules:
        return
    import numba.np.linalg as linalg

    real = linalg.ensure_blas

    def no_blas():
        raise ImportError("no BLAS for np.convolve")

    linalg.ensure_blas = no_blas
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        linalg.ensure_blas = real
