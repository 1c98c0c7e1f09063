# Conveniences; the tests themselves run with ./test.sh (what CI runs).
ARM64 := ../shared/arm64
ARM64_PACKAGES := numpy numba pytest gguf regex

.PHONY: test bench test-arm64 arm64-root

test:
	./test.sh

bench:
	python bench/bench.py

arm64-root:
	$(ARM64)/setup.sh $(ARM64_PACKAGES)

# The kernels under emulation as a Raspberry Pi 4 (NEON, no sdot) and a Pi 5 (NEON + sdot):
# every kernel test passes and nothing dies of SIGILL. Slow (qemu + JIT): not part of CI.
test-arm64: arm64-root
	QEMU_CPU=cortex-a72 $(ARM64)/run.sh python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_quants.py
	QEMU_CPU=cortex-a76 $(ARM64)/run.sh python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_quants.py
