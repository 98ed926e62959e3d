# The README's two commands: `make report` and `make test`. Each sets up .venv by itself on a fresh machine
# (Python 3.11 and pip are all it needs), then runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is installed first and pinned: pip meeting an unpinned torch first pulls a multi-GB CUDA build
TORCH  ?= torch==2.13.0
ARGS   ?=
# Named data sets are read from AIPROD_DATA_DIR when it is set; a clone beside the project's shared/ folder uses its
# local copies. Elsewhere they download once into ~/.cache/aiprod (checked by sha256).
export AIPROD_DATA_DIR ?= $(abspath $(wildcard ../shared/data))

.PHONY: setup report test browser promtool lab bench quality wrk

setup: $(BIN)/.installed

$(BIN)/.installed: setup.py settings.ini pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name aiprod --display-name "Python (aiprod)" >/dev/null
	touch $@

# the default experiment: digits -> CNN -> evaluation -> reports/<run-id>/report.html (ARGS="-p epochs 3" etc.)
report: setup
	$(BIN)/aiprod run $(ARGS)

# every test: the notebooks' own (nbdev_test, slow cells included) and the end-to-end tests in tests/
test: setup browser promtool
	$(BIN)/nbdev_test --flags slow --n_workers 2
	$(BIN)/pytest -q

# headless Chromium for the browser tests (Debian's package; needs root and apt-get, else those tests skip)
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "no chromium: the browser tests will be skipped"

# promtool, which checks and unit-tests deploy/prometheus's rules (Debian's prometheus package, without the node exporter
# it recommends; needs root and apt-get, else those tests skip)
promtool:
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || \
	  echo "no promtool: the tests of the Prometheus rules will be skipped"

# JupyterLab on nbs/ with the project's kernel ("Python (aiprod)")
lab: setup
	$(BIN)/python -m pip install -q jupyterlab
	$(BIN)/jupyter lab nbs/

# wrk, the HTTP load generator of bench/serving.py (Debian's package; needs root and apt-get)
wrk:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
	  echo "no wrk: bench/serving.py cannot run"

bench: setup wrk
	$(BIN)/python bench/report_overhead.py
	$(BIN)/python bench/data_pipeline.py
	$(BIN)/python bench/training_throughput.py
	$(BIN)/python bench/keras_throughput.py
	$(BIN)/python bench/batch_throughput.py
	$(BIN)/python bench/predict.py
	$(BIN)/python bench/optimization.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/prediction_log.py
	$(BIN)/python bench/monitoring.py

# every model template on its full data set against its quality target (about 40 minutes on 2 CPUs)
quality: setup
	$(BIN)/python bench/quality.py
