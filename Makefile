# The two commands a new user runs: `make deploy` (the main job) and `make test`.
# Both create a local virtual environment (.venv) on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

TARGET ?= cpu
CONFIG ?= configs/demo.yaml
DATA ?=
CHECKPOINT ?=
PROFILE ?=
MODELOPT := nvidia-modelopt==0.47.0 torchprofile==0.0.4

.PHONY: deploy test venv clean help modelopt

help:
	@echo "make deploy [TARGET=cpu] [CONFIG=configs/demo.yaml] [DATA=path] [CHECKPOINT=dense.pt] [PROFILE=quick]"
	@echo "make test"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,modelopt]'
	$(BIN)/pip install -q --no-deps $(MODELOPT)
	touch $(STAMP)

venv: $(STAMP)

# The modelopt-fastnas peer (docs/MODELOPT.md) in an existing environment; `make venv` already includes it.
modelopt:
	$(BIN)/pip install -q -e '.[modelopt]'
	$(BIN)/pip install -q --no-deps $(MODELOPT)

deploy: $(STAMP)
	$(BIN)/acsl deploy $(CONFIG) --target $(TARGET) \
		$(if $(DATA),--data $(DATA)) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(if $(PROFILE),--profile $(PROFILE))

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf runs deploy .pytest_cache
