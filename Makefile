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

# The aarch64 executable, built and run under qemu (slow): built as a Pi 5 (both CPU targets
# warmed up), run as a Pi 4 and a Pi 5. The model comes from the host's cache.
ARM64_EXE_PACKAGES := $(ARM64_PACKAGES) sentencepiece jinja2 tqdm prompt_toolkit fastapi uvicorn pyinstaller
exe-arm64:
	$(ARM64)/setup.sh $(ARM64_EXE_PACKAGES)
	cp -f $$(python3 -c "from weights.fetch import fetch; print(fetch('$(EXE_MODEL)'))") dist-arm64-model.gguf
	QEMU_CPU=cortex-a76 $(ARM64)/run.sh python packaging/build.py --model dist-arm64-model.gguf --out dist-arm64 --xz-level 1
	rm -f dist-arm64-model.gguf
	QEMU_CPU=cortex-a72 $(ARM64)/run.sh dist-arm64/llamafile-linux-aarch64 -p "The capital of France is" -n 16 --temp 0
	QEMU_CPU=cortex-a76 $(ARM64)/run.sh dist-arm64/llamafile-linux-aarch64 -p "The capital of France is" -n 16 --temp 0
