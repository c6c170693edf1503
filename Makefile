# The two commands a newcomer needs: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Local PostgreSQL for the second test lane; TEST_DATABASE_URL overrides it.
PG_URL ?= postgres://postgres@127.0.0.1:5432/test

.PHONY: run test install lint check-generated test-sqlite test-postgres browser clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@# The project itself, editable, for the `dagu`/`boltbase` commands; its dependencies are
	@# the pins just installed, and setuptools (pinned there too) builds it without a download.
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

run: install
	$(PY) manage.py demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

check-generated: install
	$(PY) proto/generate.py --check
	DAGU_HOME=$$(mktemp -d) $(PY) manage.py makemigrations --check --dry-run

# Browser tests drive Debian's Chromium; install it when we can (root, apt), else they skip.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing chromium for the browser tests"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
				|| echo "warning: could not install chromium; browser tests will be skipped"; \
		else echo "warning: /usr/bin/chromium missing and not root; browser tests will be skipped"; fi; \
	fi

test-sqlite: install browser
	DAGU_HOME=$$(mktemp -d) $(VENV)/bin/pytest

# Database-facing tests again on PostgreSQL, when a server answers.
test-postgres: install
	@url="$${TEST_DATABASE_URL:-$(PG_URL)}"; \
	if $(PY) -c "import sys, psycopg; psycopg.connect(sys.argv[1], connect_timeout=3).close()" "$$url" 2>/dev/null; then \
		echo "PostgreSQL lane: database-facing and process tests against $$url"; \
		DAGU_HOME=$$(mktemp -d) DATABASE_URL="$$url" E2E_DATABASE_URL="$$url" \
			$(VENV)/bin/pytest -m "django_db or processes"; \
	else \
		echo "PostgreSQL lane SKIPPED: no server answered at $$url (set TEST_DATABASE_URL to run it)"; \
	fi

test: lint check-generated test-sqlite test-postgres

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
