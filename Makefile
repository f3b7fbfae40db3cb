# llava-edge: the two commands a fresh machine needs.
#   make test   set up .venv, then run the whole test suite (what CI runs)
#   make demo   set up .venv, then tiny model -> synthetic data -> train -> export -> run -> bench
# Re-running skips what is already installed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
LLAMA_CPP_VERSION ?= 0.3.36
PYTEST_ARGS ?=
DEMO_DIR ?= demo_out

.PHONY: setup test test-fast demo clean-demo clean

setup: $(VENV)/.installed

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

# torch before the project, so that `[train]`'s torch requirement is already met by the
# right build (CPU here) and pip never reaches for a CUDA wheel.
$(VENV)/.torch: $(PY) scripts/install_torch.sh
	scripts/install_torch.sh $(PY) $(TORCH_VERSION)
	touch $@

# llama-cpp-python compiled with flags from this CPU (see scripts/llama_cmake_args.sh).
$(VENV)/.llama-cpp: $(PY) scripts/build_llama_wheel.sh scripts/llama_cmake_args.sh
	wheel="$$(scripts/build_llama_wheel.sh $(PY) $(LLAMA_CPP_VERSION))" && \
	  $(PY) -m pip install --quiet --no-deps --force-reinstall "$$wheel" && \
	  $(PY) -m pip install --quiet "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch $(VENV)/.llama-cpp
	$(PY) -m pip install --quiet -e ".[all]"
	touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything but the tests marked slow (large presets, end-to-end runs).
test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/llava-edge demo --workdir $(DEMO_DIR) --force

clean-demo:
	rm -rf $(DEMO_DIR)

clean: clean-demo
	rm -rf $(VENV) .pytest_cache
