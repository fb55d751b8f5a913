# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
COLAB_VENV := .venv-colab
COLAB_BIN := $(COLAB_VENV)/bin
DATASET ?= sample
NOTEBOOKS := galaxy_class_mobilenet.ipynb galaxy_class_squeezenet.ipynb
RUN ?= models/mobilenet_sample
PORT ?= 8000
CHECK_PYTHON := $(PYTHON) -c 'import sys; sys.exit("error: Python 3.11 or newer is needed") if sys.version_info < (3, 11) else None'

.PHONY: setup run test test-colab test-install lab demo clean-venv

$(BIN)/.installed: requirements.txt pyproject.toml
	@$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

setup: $(BIN)/.installed

# Colab's own versions (requirements-colab.txt) with nothing of ours: the notebooks' setup cell installs the rest.
$(COLAB_BIN)/.installed: requirements-colab.txt
	@$(CHECK_PYTHON)
	$(PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_BIN)/python -m pip install --quiet -r requirements-colab.txt
	$(COLAB_BIN)/python -Xfrozen_modules=off -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

# Checks (and downloads) the data first; a notebook replaces the committed one only if it ran to the end.
run: setup
	$(BIN)/python -m galaxy_class inspect "$(DATASET)"
	for nb in $(NOTEBOOKS); do \
	  $(BIN)/papermill --cwd . -k python3 $$nb $$nb.running.ipynb -p dataset "$(DATASET)" -p overwrite True \
	    && mv $$nb.running.ipynb $$nb || { echo "error: $$nb failed; see $$nb.running.ipynb"; exit 1; }; \
	done

test: setup
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-colab
	$(MAKE) --no-print-directory test-install

# On Colab's versions: the notebooks' setup cell as it runs on Colab, then both notebooks in quick mode.
test-colab: $(COLAB_BIN)/.installed
	$(COLAB_BIN)/python -m pytest tests/test_colab_stack.py \
	  tests/test_notebooks.py::test_notebook_runs_top_to_bottom_in_quick_mode

# The package as users install it: a wheel of this checkout in a new venv (versions held to requirements.txt's
# pins), then `galaxy-class predict` with the shipped model, run outside the checkout.
INSTALL_CHECK := .install-check
test-install:
	@$(CHECK_PYTHON)
	rm -rf $(INSTALL_CHECK)
	$(PYTHON) -m venv $(INSTALL_CHECK)/venv
	$(INSTALL_CHECK)/venv/bin/pip install --quiet --upgrade pip
	$(INSTALL_CHECK)/venv/bin/pip wheel --quiet --no-deps --wheel-dir $(INSTALL_CHECK)/dist .
	$(INSTALL_CHECK)/venv/bin/pip install --quiet -c requirements.txt $(INSTALL_CHECK)/dist/*.whl
	cd $(INSTALL_CHECK) && venv/bin/galaxy-class predict $(CURDIR)/models/mobilenet_gz1 $(CURDIR)/data/cutouts/*.jpeg \
	  > predictions.txt && cat predictions.txt
	test "$$(grep -cE '\.jpeg: (Elliptical|Spiral|Edge-on|Merger) \([0-9.]+%\)$$' $(INSTALL_CHECK)/predictions.txt)" = 8
	@echo "install check: the installed wheel classified all 8 bundled cutouts with the shipped model"

# JupyterLab in the project environment, for the notebooks
lab: setup
	$(BIN)/jupyter lab $(NOTEBOOKS)

# The web page for a trained run folder (trains nothing): make demo RUN=path/to/run
demo: setup
	$(BIN)/python -m galaxy_class serve "$(RUN)" --port $(PORT)

clean-venv:
	rm -rf $(VENV) $(COLAB_VENV) $(INSTALL_CHECK)
