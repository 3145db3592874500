# shadowrl: `make demo` runs the main job, `make test` runs the tests. Both install first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
OUT ?= out/demo/$(notdir $(basename $(SCENARIO)))
SCENARIO ?= envs/checkout.yaml
EXPERIMENT ?= experiments/checkout-maskable-ppo.yaml

.PHONY: install system-deps docker-deps demo test lint bench clean

# torch first, and its CPU build: PyTorch's CPU wheel index (a plain `pip install torch`
# pulls a multi-GB CUDA build). Where that index is unreachable, pip still finds a local CPU
# wheel from its configured find-links; failing both, PyPI's torch. Skipped when installed.
TORCH ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

install:
	@$(PYTHON) -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$(TORCH)')" \
		2>/dev/null || $(PIP) install -q --retries 1 "torch==$(TORCH)" --index-url $(TORCH_INDEX) \
		|| $(PIP) install -q "torch==$(TORCH)"
	$(PIP) install -q -e ".[all,dev]"

# What the tests need beyond Python: a headless Chromium to look at the HTML report as a user
# would, and its chromedriver for the service dashboard's browser test (Selenium drives it).
# Installed from Debian's packages when missing and we may (root with apt-get).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing chromium (Debian package) for the report's browser test"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
			|| { apt-get update -q >/dev/null 2>&1 && \
			     DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
		else echo "chromium missing and cannot be installed here: the browser test will skip"; fi; }
	@command -v chromedriver >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing chromium-driver (Debian package) for the dashboard's browser test"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium-driver >/dev/null 2>&1 \
			|| { apt-get update -q >/dev/null 2>&1 && \
			     DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium-driver >/dev/null; }; \
		else echo "chromedriver missing and cannot be installed here: the dashboard's browser test will skip"; fi; }

# What the Docker shadow's tests need beyond Python: dockerd (the tests start a private daemon
# when none answers; no systemd needed) and debootstrap (builds the base image from the Debian
# mirror, without any registry). Installed from Debian's packages when missing and we may.
docker-deps:
	@{ command -v dockerd || test -x /usr/sbin/dockerd; } >/dev/null 2>&1 && \
	{ command -v debootstrap || test -x /usr/sbin/debootstrap; } >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing docker.io and debootstrap (Debian packages) for the Docker shadow's tests"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap >/dev/null 2>&1 \
			|| { apt-get update -q >/dev/null 2>&1 && \
			     DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap >/dev/null; }; \
		else echo "dockerd or debootstrap missing and cannot be installed here: the docker tests will fail"; fi; }

demo: install
	$(PYTHON) -m shadowrl.demo --scenario $(SCENARIO) --experiment $(EXPERIMENT) --out $(OUT)

test: install system-deps docker-deps
	$(PYTHON) -m ruff check shadowrl tests benchmarks
	$(PYTHON) -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --durations=15

lint:
	$(PYTHON) -m ruff check shadowrl tests benchmarks

bench:
	$(PYTHON) benchmarks/env_throughput.py

clean:
	rm -rf out build *.egg-info .pytest_cache .ruff_cache
