# Set-up plus the main job (`make demo`) and set-up plus the whole test suite (`make test`), on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-slow test-gpu gpu-data lint format fashion-mnist benchmarks clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package where it is missing and we are root.
fashion-mnist:
	@if [ ! -d $(FMNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi

demo: $(STAMP) fashion-mnist
	$(PY) examples/demo.py --results runs/demo/table.md

test: $(STAMP) fashion-mnist
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(PY) -m pytest -q

test-slow: $(STAMP) fashion-mnist
	$(PY) -m pytest -q -m slow

# The checks that need a CUDA GPU (tests/test_gpu.py); benchmarks/gpu_check.sh runs them with the GPU benchmarks.
test-gpu: $(STAMP) fashion-mnist
	$(PY) -m pytest -q -m gpu

# Fashion-MNIST's IDX files in .gpu/data (ignored by git), to carry to a machine without the Debian package.
gpu-data: fashion-mnist
	mkdir -p .gpu/data && cp $(FMNIST)/*-ubyte.gz .gpu/data/

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks examples
	$(VENV)/bin/ruff check --fix src tests benchmarks examples

benchmarks: $(STAMP) fashion-mnist
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) runs build *.egg-info
