"""Numba compute kernels. Importing this package fixes the CPU level (see kernels.cpu)."""
from . import cache_locator, cpu

cache_locator.install()  # frozen (one-file executable) only: Numba's cache in the user's cache dir
cpu.configure()
