"""Numba compute kernels. Importing this package fixes the CPU level (see kernels.cpu)."""
from . import cache_locator, cpu, stale

cache_locator.install()  # frozen (one-file executable) only: Numba's cache in the user's cache dir
if not cache_locator.frozen():
    stale.drop_stale_caches()  # Numba's cache checks only each function's own file
cpu.configure()
