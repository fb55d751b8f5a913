# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATASET ?= sample
NOTEBOOKS := galaxy_class_mobilenet.ipynb galaxy_class_squeezenet.ipynb
RUN ?= models/mobilenet_sample
PORT ?= 8000

.PHONY: setup run test demo clean-venv

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("error: Python 3.10 or newer is needed") if sys.version_info < (3, 10) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

setup: $(BIN)/.installed

# Checks (and downloads) the data first; a notebook replaces the committed one only if it ran to the end.
run: setup
	$(BIN)/python -m galaxy_class inspect "$(DATASET)"
	for nb in $(NOTEBOOKS); do \
	  $(BIN)/papermill --cwd . -k python3 $$nb $$nb.running.ipynb -p dataset "$(DATASET)" -p overwrite True \
	    && mv $$nb.running.ipynb $$nb || { echo "error: $$nb failed; see $$nb.running.ipynb"; exit 1; }; \
	done

test: setup
	$(BIN)/python -m pytest

# The web page for a trained run folder (trains nothing): make demo RUN=path/to/run
demo: setup
	$(BIN)/python -m galaxy_class serve "$(RUN)" --port $(PORT)

clean-venv:
	rm -rf $(VENV)
