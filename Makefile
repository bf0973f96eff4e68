# Thin wrappers over edge-bench. `make quantize` and `make test` create the environment when missing.
# VENV can point outside the clone (CI keeps one per pyproject.toml hash under ~/.cache).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EDGE := $(VENV)/bin/edge-bench
DEPS_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
STAMP := $(VENV)/.deps-$(DEPS_HASH)
ARTIFACTS ?= build/artifacts
RESULTS ?= build/results

.PHONY: setup quantize quantize-detector train bench report sweep test clean accuracy-report

setup: $(STAMP)
	@$(PY) -c "import edge_mobilenet, pathlib, sys; sys.exit(pathlib.Path(edge_mobilenet.__file__).resolve().parent != pathlib.Path('edge_mobilenet').resolve())" 2>/dev/null \
	  || $(PY) -m pip install -q --no-deps -e .

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[host,test,sweep]"
	@rm -f $(VENV)/.deps-*
	@touch $@

## The main job: train the default models on the bundled digits (cached), convert and quantize them
## into $(ARTIFACTS) with $(ARTIFACTS)/manifest.json. A second run reuses what exists.
quantize: setup
	$(EDGE) quantize --recipe converters/default.toml --output $(ARTIFACTS)

## The default detection task (converters/detection.toml): train SSDLite-MobileNetV2 0.35/96 on the synthetic
## digits set (about 20 minutes on 2 cores, cached), then all six formats into build/artifacts-detection.
quantize-detector: setup
	$(EDGE) quantize --recipe converters/detection.toml

## Benchmark the default artifacts on this machine; a fresh results file each time.
bench: quantize
	rm -f $(RESULTS)/local.json
	$(EDGE) bench $(ARTIFACTS) --device local --output $(RESULTS)/local.json
	$(EDGE) report $(RESULTS)/local.json --output $(RESULTS)/local

report:
	$(EDGE) report $(RESULTS)/local.json --output $(RESULTS)/local

## The default sweep (benchmarks/sweeps/default.toml) on a local Ray instance, then its report
## (Markdown, PNG plots, one HTML page). A re-run skips the finished cells.
SWEEP ?= benchmarks/sweeps/default.toml
sweep: setup
	$(EDGE) sweep $(SWEEP)
	$(EDGE) report build/sweeps/default/results.json --output build/sweeps/default/report

test: setup
	$(VENV)/bin/pytest -q

clean:
	rm -rf build

## Issue-5 evidence: float vs plain vs accuracy-aware int8 (needs ../shared/data and `make quantize`).
accuracy-report: quantize
	$(PY) benchmarks/accuracy_aware.py
