# Two commands set up a fresh machine: `make demo` (the main job) and `make test` (the suite).
# torch is installed first and pinned: anything that lets pip pick torch itself pulls CUDA wheels.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0

.PHONY: demo test bench reproduce reproduce-natural notebooks setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)

# one stamp per extra, rebuilt when pyproject.toml changes
$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH) -e ".[test]"
	touch $@ $(VENV)/.installed-base

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH) -e ".[bench]"
	touch $@ $(VENV)/.installed-base

$(VENV)/.installed-notebooks: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH) -e ".[notebooks]"
	touch $@ $(VENV)/.installed-base

$(VENV)/.installed-gguf: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH) -e ".[gguf]"
	touch $@ $(VENV)/.installed-base

setup: $(VENV)/.installed-base

# the main job: train the 2-layer preset and its 1-layer control, analyse, ablate, report.
# A rerun reuses the built corpus, finished runs and up-to-date analyses.
DEMO := runs/demo
demo: $(VENV)/.installed-base
	-$(BIN)/icl-lab data build code --if-missing  # the Python-source corpus of natural-2l (~50 s once); optional offline
	$(BIN)/icl-lab train --preset synthetic-2l --out $(DEMO)/synthetic-2l --resume
	$(BIN)/icl-lab train --preset synthetic-1l --out $(DEMO)/synthetic-1l --resume
	$(BIN)/icl-lab analyze $(DEMO)/synthetic-2l $(DEMO)/synthetic-1l --reuse
	$(BIN)/icl-lab ablate $(DEMO)/synthetic-2l --kind zero --reuse
	$(BIN)/icl-lab report $(DEMO)/synthetic-2l $(DEMO)/synthetic-1l --out $(DEMO)/report.html

# the paper's six arguments, each with a verdict table, in runs/reproduce/report.html (~15 min on 2 cores)
reproduce: $(VENV)/.installed-gguf
	-$(BIN)/icl-lab data build bundled --if-missing  # for SmolLM2's row in Argument 6; optional offline
	$(BIN)/icl-lab reproduce all --out runs/reproduce

# Argument 1 on natural text: natural-2l (3 seeds), natural-boost-2l and natural-1l, in
# runs/reproduce-natural/report.html (~45 min on 2 cores; docs/natural-phase-change.md). Argument 3
# (`icl-lab reproduce argument-3 --data natural`) ablates every head at every checkpoint at context
# 256: about 50 minutes more on 2 cores.
reproduce-natural: $(VENV)/.installed-base
	$(BIN)/icl-lab data build code --if-missing
	$(BIN)/icl-lab reproduce argument-1 --data natural --out runs/reproduce-natural

test: $(VENV)/.installed-test
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/python -m pytest

# the tutorial notebooks, executed and rendered to HTML in docs/notebooks/: small pages that load plotly.js
# from its CDN when read (docs/decisions.md, 16); `make notebooks PLOTLY_RENDERER=notebook` inlines it (~5 MB a page, offline)
PLOTLY_RENDERER ?= notebook_connected
notebooks: $(VENV)/.installed-notebooks
	PLOTLY_RENDERER=$(PLOTLY_RENDERER) $(BIN)/jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=300 \
		--output-dir docs/notebooks notebooks/*.ipynb

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs
