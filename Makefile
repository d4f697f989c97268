# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# `make check` is the inner loop: lint and the tests that start no daemon.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Worker processes for pytest. The daemon tests wait on sockets and subprocesses as much
# as they compute: on the 2-core machine (load average 2-3) the suite of 826 tests took
# 87 s with 3 workers, 98 s with 2 and 112 s with 4 (README, "Two commands").
WORKERS ?= 3

# The lock files (`make lock` writes them from pyproject.toml): what every venv installs.
# pylock.toml (PEP 751): the app and its test tools, what make run, make test and CI install.
LOCK        := pylock.toml
BENCH_LOCK  := requirements-bench.txt
OLDEST_LOCK := requirements-oldest.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)

# The oldest versions pyproject.toml allows, in a venv of their own.
OLDEST       := .venv-oldest
OLDEST_STAMP := $(OLDEST)/.installed-$(shell cat pyproject.toml $(OLDEST_LOCK) | cksum | cut -d' ' -f1)

# uv resolves the locks and installs pylock.toml (pip cannot read it yet); pip installs the
# requirements*.txt locks. Both check every file's hash.
# `make lock UPGRADE=` keeps the locked versions that pyproject.toml still allows (not in
# the oldest lock, which always takes the floors).
UV_VERSION := 0.13.9
UPGRADE    ?= --upgrade
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command 'make lock' $(UPGRADE)

.PHONY: run test test-postgresql check check-oldest lint format lock check-config bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(BIN)/uv: | $(BIN)/python
	$(BIN)/pip install --quiet uv==$(UV_VERSION)

$(STAMP): pyproject.toml $(LOCK) | $(BIN)/uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

## run: install into .venv and start the daemon on config/dev.toml (mails land in var/maildir/new)
run: $(STAMP)
	@mkdir -p var
	@echo "maild: SMTP on 127.0.0.1:8025, web on http://127.0.0.1:8080/signup"
	@echo "maild: try it:  swaks --server 127.0.0.1:8025 --to entry@mail.example.jp --from you@example.jp --header 'Subject: ' --body ' '"
	@echo "maild: then open the /register/ URL of the answer:  tools/read-maildir"
	$(BIN)/maild --config config/dev.toml serve

## test: the full suite, as CI runs it: linters, then every test in parallel workers
test: $(STAMP) lint
	$(BIN)/pytest -n $(WORKERS)

## test-postgresql: the full suite on a throw-away PostgreSQL (needs Debian's postgresql)
test-postgresql: $(STAMP)
	.ci/with-postgresql $(MAKE) test

## check: the inner loop: linters and the tests that start no daemon, browser or systemd
check: $(STAMP) lint
	$(BIN)/pytest -n $(WORKERS) -m 'not e2e'

## check-oldest: the fast tests at the oldest versions pyproject.toml allows (.venv-oldest)
check-oldest: $(OLDEST_STAMP)
	$(OLDEST)/bin/pytest -n $(WORKERS) -m 'not e2e' -p no:cacheprovider

$(OLDEST_STAMP): pyproject.toml $(OLDEST_LOCK)
	rm -rf $(OLDEST)
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install --quiet --upgrade pip
	$(OLDEST)/bin/pip install --quiet --require-hashes -r $(OLDEST_LOCK)
	$(OLDEST)/bin/pip install --quiet --no-deps -e .
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check maild tests bench
	$(BIN)/ruff format --check maild tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format maild tests bench
	$(BIN)/ruff check --fix maild tests bench

## lock: resolve pyproject.toml again to the newest versions it allows (pylock.toml, requirements*.txt)
lock: | $(BIN)/uv
	$(UV_COMPILE) -o requirements.txt
	$(UV_COMPILE) --extra test -c requirements.txt -o $(LOCK)
	$(UV_COMPILE) --extra test --extra bench -c requirements.txt -o $(BENCH_LOCK)
	$(UV_COMPILE) --extra test --resolution lowest-direct --upgrade -o $(OLDEST_LOCK)

## bench: the benchmark suite against Postfix's smtp-sink/smtp-source (bench/README.md)
bench: $(STAMP)
	$(BIN)/pip install --quiet --require-hashes -r $(BENCH_LOCK)
	$(BIN)/python -m bench

check-config: $(STAMP)
	$(BIN)/maild --config config/dev.toml check-config

clean:
	rm -rf $(VENV) $(OLDEST) var build dist *.egg-info
