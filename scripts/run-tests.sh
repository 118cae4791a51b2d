#!/usr/bin/env bash
# The README's test command: install hpcem (and its test dependencies) from this checkout,
# start the real local SLURM and Grid Engine (loopback only), then run the whole test suite.
#
# A scheduler that cannot be started here is reported, and its tests skip with that reason.
# Extra arguments go to pytest, e.g.:  bash scripts/run-tests.sh -k slurm -x
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "[run-tests] installing hpcem from $(pwd) ..."
python -m pip install --quiet --disable-pip-version-check -e ".[test]" || {
    echo "[run-tests] ERROR: pip install failed" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    for svc in slurm sge; do
        log=/tmp/hpcem-start-$svc.log
        if bash "scripts/start-$svc.sh" >"$log" 2>&1; then
            echo "[run-tests] $svc is up ($(tail -n 1 "$log"))"
        else
            echo "[run-tests] WARNING: could not start $svc (see $log); its tests will skip:" >&2
            tail -n 5 "$log" >&2
        fi
    done
else
    echo "[run-tests] not root: SLURM and Grid Engine are not started; their tests will skip" >&2
fi

python -m pytest "$@"
