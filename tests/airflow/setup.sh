#!/usr/bin/env bash
# Creates .venv-airflow: a virtualenv of its own for Apache Airflow, so that
# Airflow's many pins never clash with the test virtualenv (.venv).
#
# Idempotent: when the venv already holds exactly the pinned requirements
# (recorded in a stamp file), it does nothing. Needs PyPI (pip) the first time.
#
#   bash tests/airflow/setup.sh            # create or reuse
#   AIRFLOW_VENV=/some/where bash tests/airflow/setup.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${AIRFLOW_VENV:-$ROOT/.venv-airflow}"
PYTHON="${AIRFLOW_PYTHON:-python3}"

# Pinned. Airflow 3.3.2 is the version the DAG and the test were written for.
# pyarrow is what the DAG's manifest sensor uses to read S3 / local storage
# (same version as tests/requirements.txt). pytest is there so that the test can
# also be run as `.venv-airflow/bin/python -m pytest tests/airflow`; the test
# itself drives Airflow through this venv's `airflow` CLI either way.
REQUIREMENTS=(
  "apache-airflow==3.3.2"
  "pyarrow==26.0.1"
  "pytest==9.2.0"
)
STAMP="$VENV/.convmart-requirements"
WANT="$(printf '%s\n' "${REQUIREMENTS[@]}")"

if [[ -x "$VENV/bin/airflow" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "setup.sh: $VENV is up to date (${REQUIREMENTS[*]})"
  exit 0
fi

start=$(date +%s)
echo "setup.sh: creating $VENV with ${REQUIREMENTS[*]}"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${REQUIREMENTS[@]}"
"$VENV/bin/airflow" version >/dev/null
printf '%s\n' "$WANT" > "$STAMP"
echo "setup.sh: done in $(( $(date +%s) - start ))s ($("$VENV/bin/airflow" version 2>/dev/null | tail -n1))"
