"""Numba compute kernels. Importing this package fixes the CPU level (see kernels.cpu)."""
from . import cpu

cpu.configure()
