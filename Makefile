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

.PHONY: setup run test test-colab lab demo clean-venv

$(BIN)/.installed: requirements.txt pyproject.toml
	@$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

setup: $(BIN)/.installed

# Colab's own versions (requirements-colab.txt) with nothing of ours: the notebooks' first cell installs the rest.
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

# On Colab's versions: the notebooks' first cell as it runs on Colab, then both notebooks in quick mode.
test-colab: $(COLAB_BIN)/.installed
	$(COLAB_BIN)/python -m pytest tests/test_colab_stack.py \
	  tests/test_notebooks.py::test_notebook_runs_top_to_bottom_in_quick_mode

# JupyterLab in the project environment, for the notebooks
lab: setup
	$(BIN)/jupyter lab $(NOTEBOOKS)

# The web page for a trained run folder (trains nothing): make demo RUN=path/to/run
demo: setup
	$(BIN)/python -m galaxy_class serve "$(RUN)" --port $(PORT)

clean-venv:
	rm -rf $(VENV) $(COLAB_VENV)
