# Two commands do all set-up on a fresh machine (Python 3.11+ and pip):
#   make demo   creates .venv, installs mmpref, runs the miniature world end to end (mmpref run params/tiny.yaml)
#   make test   creates .venv, installs mmpref + test tools, runs the unit, notebook and end-to-end tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PARAMS ?= params/tiny.yaml
# torch first and pinned: a bare "torch" requirement would pull the newest build with several GB of CUDA packages.
TORCH ?= torch==2.13.0

.PHONY: demo test install lab clean-runs

$(BIN)/mmpref: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(BIN)/mmpref

install: $(BIN)/mmpref

demo: install
	$(BIN)/mmpref run $(PARAMS)

test: install
	$(BIN)/python -m pytest tests -q -rs

# the project root, so runs/, figures/ and tables are reachable beside notebooks/; as root (a container) Jupyter needs
# --allow-root
lab: install
	$(BIN)/jupyter lab --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root,)

clean-runs:
	rm -rf runs/
