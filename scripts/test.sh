#!/usr/bin/env bash
# Install etr-hub with its test extras into ./.venv and run the test suite; then run the
# registry tests again against a throwaway PostgreSQL cluster (Debian's packages, installed
# here if missing). With arguments, runs only `pytest ARGS`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q -e '.[test]'

if [ "$#" -gt 0 ]; then
    exec python -m pytest -q "$@"
fi

# Lint, format and types first: they take seconds and name the line.
ruff check .
ruff format --check .
mypy

# PostgreSQL from Debian's packages (its binaries live in /usr/lib/postgresql/N/bin).
have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null; }
if ! have_postgres && command -v apt-get >/dev/null; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
    if [ "$SUDO" != none ]; then
        echo "installing PostgreSQL from Debian's packages…" >&2
        $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null \
            || echo "warning: apt-get install postgresql failed" >&2
    fi
fi

# The whole suite on SQLite (tests/test_registry_postgres.py starts its own cluster).
# loadfile: a module's tests stay on one worker, so module-wide fixtures (the serve tests'
# servers, a PostgreSQL cluster) start once, not once per worker.
python -m pytest -n 2 --dist loadfile -q

# The registry CLI tests again, each test on a fresh schema of one throwaway cluster.
if reason=$(python tests/pg_cluster.py check 2>&1); then
    echo "registry tests on PostgreSQL:" >&2
    python tests/pg_cluster.py run -- python -m pytest -n 2 --dist loadfile -q -p no:cacheprovider tests/test_expert_cli.py tests/test_console_script.py
else
    echo "SKIPPED the PostgreSQL registry run: ${reason} (install it with: apt-get install -y postgresql)" >&2
fi
