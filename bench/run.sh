#!/usr/bin/env bash
# convmart vs DuckDB/Polars benchmark:
#   bench/run.sh [--preset XS|S|scaling] [--repeat N] [--max-per-day N]   (see bench/run_bench.py --help)
# Always asks cargo for the release binary (a no-op when it is up to date),
# so a stale build is never measured. Built with the Ballista feature for the
# convmart-ballista row.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --features ballista --target-dir target/bench
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv && .venv/bin/pip install -q -r tests/requirements.txt
fi
PATH="$PWD/.venv/bin:$PATH" exec .venv/bin/python bench/run_bench.py "$@"
