# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test lint format check-config bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

## run: install into .venv and start the daemon on config/dev.toml (mails land in var/maildir/new)
run: $(STAMP)
	@mkdir -p var
	@echo "maild: SMTP on 127.0.0.1:8025, web on http://127.0.0.1:8080/signup"
	@echo "maild: try it:  swaks --server 127.0.0.1:8025 --to entry@mail.example.jp --from you@example.jp --body ''"
	@echo "maild: then open the /register/ URL in the newest file of var/maildir/new/"
	$(BIN)/maild --config config/dev.toml serve

## test: install what the tests need and run linters and the test suite
test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check maild tests bench
	$(BIN)/ruff format --check maild tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format maild tests bench
	$(BIN)/ruff check --fix maild tests bench

## bench: the benchmark suite against Postfix's smtp-sink/smtp-source (bench/README.md)
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

check-config: $(STAMP)
	$(BIN)/maild --config config/dev.toml check-config

clean:
	rm -rf $(VENV) var build dist *.egg-info
