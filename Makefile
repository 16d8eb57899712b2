# Two entry points for a fresh machine: `make figures` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: figures figures-quick test bench lint readme docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test,docs,experiments]"
	touch $(STAMP)

figures: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m ttr_stats figures --out paper_figures/out

figures-quick: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m ttr_stats figures --out paper_figures/out --quick

test: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest -q
	MPLBACKEND=Agg $(BIN)/python -m pytest -q --doctest-modules ttr_stats \
		--doctest-glob="*.md" docs/getting_started.md

# the CPU targets of the fast linear-memory and nonparametric issues: the linear families against their
# loops and plain NumPy; NW / local linear against statsmodels KernelReg; causal kernel ridge against
# scikit-learn KernelRidge refitted on every prefix (~4 minutes on 2 cores)
bench: $(STAMP)
	$(BIN)/python -m benchmarks.cpu_fast
	$(BIN)/python -m benchmarks.cpu_tiled
	$(BIN)/python -m benchmarks.cpu_kernel_ridge

lint: $(STAMP)
	$(BIN)/ruff check ttr_stats tests paper_figures benchmarks experiments
	$(BIN)/ruff format --check ttr_stats

# the documentation site into site/, warnings as errors; the site extra is installed here only
SITE_STAMP := $(VENV)/.installed-site
$(SITE_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[site]"
	touch $(SITE_STAMP)

docs: $(SITE_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

readme: $(STAMP)
	$(BIN)/python -c "from ttr_stats.recipes import _main; _main(['--update-readme', 'README.md'])"

clean:
	rm -rf $(VENV) paper_figures/out .pytest_cache site
