# llava-edge: the two commands a fresh machine needs.
#   make test   set up .venv, then run the whole test suite (what CI runs)
#   make demo   set up .venv, then tiny model -> stage 0 -> synthetic data -> train -> export -> run -> bench
# Re-running skips what is already installed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
LLAMA_CPP_VERSION ?= 0.3.36
PYTEST_ARGS ?=
DEMO_DIR ?= demo_out
# The lock: exact versions the suite passed with (`make lock` rewrites it from .venv).
# Empty (`make setup CONSTRAINTS=`) resolves afresh, e.g. on a Python the lock does not cover.
CONSTRAINTS ?= constraints.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
LOCK_FILE := $(or $(CONSTRAINTS),constraints.txt)

.PHONY: setup test test-fast demo clean-demo clean lock

setup: $(VENV)/.installed

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel $(PIP_C)

# torch before the project, so that `[train]`'s torch requirement is already met by the
# right build (CPU here) and pip never reaches for a CUDA wheel.
$(VENV)/.torch: $(PY) scripts/install_torch.sh
	scripts/install_torch.sh $(PY) $(TORCH_VERSION)
	touch $@

# llama-cpp-python compiled with flags from this CPU (see scripts/llama_cmake_args.sh).
# The lock pins llama-cpp-python to LLAMA_CPP_VERSION: change both together.
# The stamp is named by a hash of the flags: a .venv that meets another CPU (a checkout
# on a shared disk, a VM moved to other hardware) or other CMAKE_ARGS gets the build that
# fits, rather than one that may die with "Illegal instruction".
LLAMA_FLAGS_KEY := $(shell scripts/llama_cmake_args.sh 2>/dev/null | sha256sum | cut -c1-12)
LLAMA_STAMP := $(VENV)/.llama-cpp-$(LLAMA_FLAGS_KEY)
$(LLAMA_STAMP): $(PY) scripts/build_llama_wheel.sh scripts/llama_cmake_args.sh scripts/amx_probe.sh $(CONSTRAINTS)
	wheel="$$(scripts/build_llama_wheel.sh $(PY) $(LLAMA_CPP_VERSION))" && \
	  $(PY) -m pip install --quiet --no-deps --force-reinstall "$$wheel" && \
	  $(PY) -m pip install --quiet "llama-cpp-python==$(LLAMA_CPP_VERSION)" $(PIP_C)
	rm -f $(VENV)/.llama-cpp $(VENV)/.llama-cpp-*
	touch $@

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) $(VENV)/.torch $(LLAMA_STAMP)
	$(PY) -m pip install --quiet -e ".[all]" $(PIP_C)
	touch $@

# Rewrite the lock from .venv (run after `make test` passes): every installed package
# at its exact version, less llava-edge itself; a local label such as torch's "+cpu" is
# dropped so that the pin also matches the CUDA build; llama-cpp-python (installed from
# our own wheel) is pinned to LLAMA_CPP_VERSION.
lock:
	@test -f $(VENV)/.installed || { echo "no $(VENV) yet: run make setup (and make test) first" >&2; exit 1; }
	{ echo "# The lock: exact versions \`make test\` passed with. Rewrite with \`make lock\`."; \
	  echo "# From: Python $$($(PY) -c 'import platform; print(platform.python_version())'), $$(. /etc/os-release 2>/dev/null; echo "$${PRETTY_NAME:-$$(uname -s)}"), $$(uname -m)."; \
	  { $(PY) -m pip freeze --all --exclude-editable --exclude llava-edge --exclude llama-cpp-python \
	      | grep -E '^[A-Za-z0-9._-]+==' | sed -E 's/^([^=]+==[^+]+)\+.*$$/\1/'; \
	    echo "llama-cpp-python==$(LLAMA_CPP_VERSION)"; } | LC_ALL=C sort -f -t= -k1,1; } > $(LOCK_FILE).tmp
	mv $(LOCK_FILE).tmp $(LOCK_FILE)

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
