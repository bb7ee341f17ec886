# Everything runs from the project's own virtual environment in .venv.
PY ?= .venv/bin/python
VENV := .venv
PROTOS := $(wildcard protos/ditto/v1/*.proto)

.PHONY: setup face-models protos test lint bench gpu-check gpu-kit demo up clean

setup: $(VENV)/.installed $(VENV)/.paste-built face-models

$(VENV)/.installed: pyproject.toml setup.py clients/python/pyproject.toml
	@tools/need-system-package redis-server redis-server "the tests start a throwaway Redis server"
	@tools/need-system-package cc gcc "the paste-back pass, services/renderer/_paste.c, is compiled at install"
	@tools/need-system-package promtool prometheus "the alert rules are checked with promtool, and a test runs Prometheus" \
		|| echo "continuing without prometheus: the alert-rule tests say what to install"
	test -x $(PY) || python3 -m venv $(VENV)
	@tools/need-system-package "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" \
		python3-dev "the paste-back pass is a C extension built against Python's headers"
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: on CPU machines this is the local CPU wheel (no CUDA downloads)
	$(PY) -m pip install -q torch==2.13.0
	# the client package (generated stubs + SDK, no torch) first: the main package depends on it
	$(PY) -m pip install -q -e ./clients/python
	# dev tools and the voice-agent extras (their tests run in CI, never skipped)
	$(PY) -m pip install -q -e '.[dev,livekit,pipecat]'
	# pipecat-ai caps protobuf<7 in every release; its other requirements are the [pipecat] extra (see pyproject)
	$(PY) -m pip install -q --no-deps pipecat-ai==1.14.0
	touch $@

# The editable install builds the paste-back extension (services/renderer/_paste.c) in place once; an edit of the C
# source rebuilds it here. A per-version build from before the stable-ABI one (_paste.abi3.so) would be imported
# ahead of it, so it goes first.
$(VENV)/.paste-built: $(VENV)/.installed services/renderer/_paste.c
	rm -f services/renderer/_paste.cpython-*.so
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# The MediaPipe face models (Apache-2.0) registration runs: taken out of the mediapipe wheel on PyPI, checked by
# SHA-256, kept in ~/.cache/ditto/face-models (never downloaded at run time). A no-op when they are there already.
face-models: $(VENV)/.installed
	$(PY) -m ditto_app.cli weights faces

# Stubs are generated, never edited, and committed (so `pip install` needs no build step): the client package's
# ditto_client/v1/*_pb2*.py from protos/ditto/v1/*.proto. A test fails when they are out of date.
protos: $(VENV)/.installed
	$(PY) -m tools.gen_protos

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy ditto ditto_app ditto_training services tools integrations clients/python/ditto_client
	$(VENV)/bin/lint-imports
	$(PY) -m tools.gen_protos --check

bench: setup
	$(PY) -m tools.bench

# Everything that needs CUDA, within 8 minutes on one GPU: gpu tests, fp16 stage benchmarks, torch.compile and CUDA
# graphs, serving capacity. Writes bench/results/gpu-*.json and gpu-summary.md (`--dry-run` checks it on a CPU).
gpu-check: setup
	$(PY) -m tools.gpu_check

# For a GPU machine with its own CUDA PyTorch and no package index: the wheels the check needs beyond such an image,
# for its Python (3.12 unless PYTHON_VERSION says otherwise), into .gpu-kit/. There: python3 -m tools.gpu_kit run
gpu-kit: setup
	$(PY) -m tools.gpu_kit collect --python $(or $(PYTHON_VERSION),3.12)

demo: setup
	@tools/need-system-package espeak-ng espeak-ng "the demo speaks its text with it" || \
		echo "continuing without espeak-ng: the demo uses a synthetic voice"
	$(PY) -m ditto_app.cli demo

up: setup
	$(PY) -m ditto_app.cli up

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache
	rm -f services/renderer/_paste*.so $(VENV)/.paste-built
	rm -rf .gpu-kit
