# The two set-up commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench ab soak profile clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sluice demo

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bench/run.sh

ab: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bench/ab.sh

soak: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bench/soak.sh

profile: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bench/profile.sh

clean:
	rm -rf $(VENV) .sluice .pytest_cache
