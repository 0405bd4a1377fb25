#!/usr/bin/env bash
# convmart vs DuckDB/Polars benchmark: bench/run.sh [--preset XS|S|scaling] [--repeat N] [--max-per-day N] (see bench/run_bench.py --help)
set -euo pipefail; cd "$(dirname "$0")/.."; [[ -x target/bench/release/convmart ]] || cargo build --release --locked --target-dir target/bench; [[ -x .venv/bin/python ]] || { python3 -m venv .venv && .venv/bin/pip install -q -r tests/requirements.txt; }; PATH="$PWD/.venv/bin:$PATH" exec .venv/bin/python bench/run_bench.py "$@"
