# shadowrl: `make demo` runs the main job, `make test` runs the tests. Both install first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
OUT ?= out/demo
SCENARIO ?= envs/checkout.yaml
EXPERIMENT ?= experiments/checkout-maskable-ppo.yaml

.PHONY: install demo test lint bench clean

install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[all,dev]"

demo: install
	$(PYTHON) -m shadowrl.demo --scenario $(SCENARIO) --experiment $(EXPERIMENT) --out $(OUT)

test: install
	$(PYTHON) -m ruff check shadowrl tests benchmarks
	$(PYTHON) -m pytest -q -p no:cacheprovider -n 2 --durations=15

lint:
	$(PYTHON) -m ruff check shadowrl tests benchmarks

bench:
	$(PYTHON) benchmarks/env_throughput.py

clean:
	rm -rf out build *.egg-info .pytest_cache .ruff_cache
