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

# The one-file executable (packaging/README.md): build, then a smoke test of what was built.
EXE_MODEL ?= smollm2-135m-instruct
.PHONY: exe exe-arm64
exe:
	python3 -m pip install -q -e . pyinstaller
	python3 packaging/build.py --model $(EXE_MODEL) --out dist
	./dist/llamafile-linux-$$(uname -m) -p "The capital of France is" -n 8 --temp 0

# The aarch64 executable for a Raspberry Pi 4 / 5 with glibc 2.31 or newer (Raspberry Pi OS bullseye),
# built under qemu in an arm64 Debian 11 root (packaging/old_glibc.py --arch arm64; the root, kept in
# ~/.cache/llamafile/bullseye-arm64-root, about an hour the first time) as a Pi 5, so both CPU targets are
# warmed up. Then the glibc it needs, and its greedy completion run in that root as a Pi 4 and a Pi 5.
exe-arm64:
	nice -n 19 python3 packaging/old_glibc.py --arch arm64 --model $(EXE_MODEL) --out dist-arm64
	python3 packaging/old_glibc.py --glibc dist-arm64/llamafile-linux-aarch64
	nice -n 19 python3 -m pytest -q -s -rs -p no:cacheprovider tests/test_old_glibc.py -k "completion and aarch64"
