# Two commands on a fresh clone: `make serve` and `make test`.
# Each creates .venv when needed, installs the pinned CPU torch first (an unpinned torch
# pulls the multi-GB CUDA build), then the project with its extras.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: venv test serve bench soak data clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev,diffusers,train]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

serve: venv
	$(VENV)/bin/tessera serve --host $(HOST) --port $(PORT)

data: venv
	$(VENV)/bin/tessera data dcss --out data/dcss

bench: venv
	$(PY) -m bench.run_all

soak: venv
	$(PY) -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
