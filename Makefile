# Two commands matter: `make demo` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
AXE := $(VENV)/node_modules/axe-core/axe.min.js
# Debian packages the deployment and browser tests drive: real Chromium, nginx,
# systemd-analyze (and openssl for a throwaway certificate). Installed when missing and we may (root with apt-get);
# otherwise those tests are skipped with a note, unless REQUIRE_SYSTEM_TOOLS=1.
SYSTEM_PACKAGES := chromium chromium-driver nginx systemd openssl redis-server

.PHONY: demo test fuzz bench check system-tools clean

$(BIN)/.installed-runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(BIN)/.installed-test: requirements-test.txt requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $(BIN)/.installed-runtime $@

$(AXE):
	-npm install --silent --no-audit --no-fund --prefix $(VENV) axe-core@4.11.0

system-tools:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null \
	    && command -v nginx >/dev/null && command -v systemd-analyze >/dev/null \
	    && command -v openssl >/dev/null && command -v redis-server >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	else echo "note: install $(SYSTEM_PACKAGES) to run the browser, nginx and systemd tests"; fi

demo: $(BIN)/.installed-runtime  ## run the portal on an embedded fake Chatwoot
	$(BIN)/python portal.py --demo

test: $(BIN)/.installed-test system-tools $(AXE)  ## the whole test suite
	$(BIN)/python -m pytest -q

FUZZ_EXAMPLES ?= 100000
fuzz: $(BIN)/.installed-test  ## fuzz the WSGI entry point with FUZZ_EXAMPLES requests (prints the count)
	HYPOTHESIS_RANDOM=1 FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_fuzz.py

bench: $(BIN)/.installed-test  ## print the performance figures
	$(BIN)/python bench/bench.py

soak: $(BIN)/.installed-test  ## 30,000 mixed requests at concurrency 32: errors, leaks, losses
	timeout 360 $(BIN)/python bench/soak.py --requests 30000 --concurrency 32 --time-limit 180

check: $(BIN)/.installed-runtime  ## validate .env and reach Chatwoot and SMTP
	$(BIN)/python portal.py --check

clean:
	rm -rf $(VENV) .pytest_cache
