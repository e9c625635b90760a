# Two commands matter: `make demo` and `make test`. Each sets up its own venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench check clean

$(BIN)/.installed-runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(BIN)/.installed-test: requirements-test.txt requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $(BIN)/.installed-runtime $@

demo: $(BIN)/.installed-runtime  ## run the portal on an embedded fake Chatwoot
	$(BIN)/python portal.py --demo

test: $(BIN)/.installed-test  ## the whole test suite
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed-test  ## print the performance figures
	$(BIN)/python bench/bench.py

check: $(BIN)/.installed-runtime  ## validate .env and reach Chatwoot and SMTP
	$(BIN)/python portal.py --check

clean:
	rm -rf $(VENV) .pytest_cache
