# Two commands on a fresh clone: `make serve` and `make test`.
# Each creates .venv when needed, installs the pinned CPU torch first (an unpinned torch
# pulls the multi-GB CUDA build), then the project with its extras.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: venv vendor test docs-test serve bench soak reliability data gpu-check gpu-train clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e '.[serve,train,export,diffusers,dev]'
	touch $@

venv: $(VENV)/.installed vendor

# onnxruntime-web for the demo page (/demo): the pinned npm package's wasm-only build, copied into
# service/static/vendor/ (gitignored, in the wheel); a no-op once there. Without npm the page
# decodes on the server (POST /v1/decode)
vendor:
	$(PYTHON) scripts/vendor_onnxruntime_web.py

# two pytest-xdist workers, each test module on one of them (its module fixtures and order kept);
# PYTEST_WORKERS= runs the suite in one process
PYTEST_WORKERS ?= -n 2 --dist loadscope
test: venv
	$(PY) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

# every shell and Python block of README.md and docs/*.md, pasted in order against `make serve` in a
# scratch copy of the clone, printed output checked (tests/docs/examples.py); downloads crawl-tiles-data
docs-test: venv
	TESSERA_DOCS_TEST=1 $(PY) -m pytest tests/docs/test_docs_examples.py -p no:cacheprovider $(PYTEST_ARGS)

serve: venv
	$(VENV)/bin/tessera serve --host $(HOST) --port $(PORT)

# the multi-artist training corpus (five Debian packages: training/corpus.py, PACKAGES); data/dcss is its DCSS
# source alone, which the service's round-trip test uses
data: venv
	$(VENV)/bin/tessera data corpus --out data/corpus
	$(VENV)/bin/tessera data dcss --out data/dcss

bench: venv
	$(PY) -m bench.run_all

soak: venv
	$(PY) -m bench.soak

# tests/reliability with its measurements of the machine (slow images, slow clients, overload with
# a CPU hog, Redis loss, SIGTERM): bench/results/reliability.json and docs/reliability.md
reliability: venv
	$(PY) scripts/reliability_report.py

# The prepared GPU run (bench/gpu_check.py): CUDA tests, raw speed, the service and training on
# the GPU, results in $$OUT or bench/results/gpu/. DRY=1: the same stages, tiny, on the CPU.
# GPU_PY: a Python whose torch has CUDA, e.g. make gpu-check GPU_PY=python3 on a GPU machine
# without .venv (then nothing is installed).
GPU_PY ?= $(PY)
gpu-check: $(if $(filter $(PY),$(GPU_PY)),venv)
	$(GPU_PY) -m bench.gpu_check $(if $(filter-out 0,$(DRY)),--dry-run)

# The prepared GPU training run (bench/gpu_train.py): the large ratio-48 layout inside a fixed time
# budget, evaluated against its PCA yardstick; results in $$OUT/gpu-train or bench/results/gpu-train/.
# Carry data/gpu/corpus (scripts/gpu_data.sh). DRY=1: the same steps, tiny, on the CPU.
gpu-train: $(if $(filter $(PY),$(GPU_PY)),venv)
	$(GPU_PY) -m bench.gpu_train $(if $(filter-out 0,$(DRY)),--dry-run)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info service/static/vendor
