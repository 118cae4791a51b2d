#!/usr/bin/env bash
# The README's test command: install hpcem from this checkout into the test virtual
# environment .venv-tests/ (inside the checkout, never the user's own Python), start the
# real local SLURM and Grid Engine (loopback only), install RELION 3.1 from Debian, then run
# pytest from that environment.
#
# .venv-tests/ is made with --system-site-packages, so the packages this Python already
# has (numpy, scipy, h5py, parsl, mpi4py, mpich ...) are reused and only what is missing
# is installed into it; hpcem itself is installed there editable, with its test extra.
# An hpcem that the user installed into that Python (`pip install .`) stays as it is; if
# it would hide the checkout inside the environment, the environment is made again
# without the system packages. Remove .venv-tests/ to start from scratch.
#
# A scheduler that cannot be started here is reported, and its tests skip with that reason.
# Extra arguments go to pytest, e.g.:  bash scripts/run-tests.sh -k slurm -x
# Environment: PYTHON, the interpreter the environment is made from (default python3; a
# different one than last time makes it again); HPCEM_TEST_ISOLATED=1 makes it without
# the system packages (everything installed from the package index, as on a bare machine).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd -P)
VENV="$ROOT/.venv-tests"
BASE_PYTHON=${PYTHON:-python3}
ISOLATED=${HPCEM_TEST_ISOLATED:-0}

say() { echo "[run-tests] $*"; }
die() { echo "[run-tests] ERROR: $*" >&2; exit 1; }

base_python_path() {
    "$BASE_PYTHON" -c 'import sys; print(sys.executable)' 2>/dev/null || die "no $BASE_PYTHON"
}

make_venv() {  # make_venv [--system-site-packages]
    say "creating the test environment $VENV (${*:-isolated}) from $(base_python_path) ..."
    rm -rf "$VENV"
    "$BASE_PYTHON" -m venv "$@" "$VENV" || die "python -m venv $* $VENV failed"
    echo "$(base_python_path) ${*:-isolated}" >"$VENV/.made-from"
}

install_checkout() {
    say "installing hpcem from $ROOT (editable, with [test]) into $VENV ..."
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]" ||
        die "pip install -e '$ROOT[test]' into $VENV failed"
}

# Which hpcem the environment imports: the checkout's, or another one that hides it.
imported_hpcem() {
    # -P and cd /: not the checkout found as the current folder, only what is installed
    (cd / && "$VENV/bin/python" -P -c \
        'import hpcem, os; print(os.path.dirname(os.path.realpath(hpcem.__file__)))' 2>/dev/null)
}

# One installer at a time (runs from this checkout may overlap); pytest runs unlocked.
exec 9>"$VENV.lock"
flock 9 2>/dev/null || true

# Reuse the environment when it works and was made from this Python (an isolated one also
# serves when the system packages are allowed: it is what a hidden checkout led to).
base=$(base_python_path)
[ -n "$base" ] || die "cannot run $BASE_PYTHON (set PYTHON to the interpreter to use)"
reuse=0
if "$VENV/bin/python" -c '' 2>/dev/null; then
    case "$(cat "$VENV/.made-from" 2>/dev/null)" in
        "$base isolated") reuse=1 ;;
        "$base --system-site-packages") [ "$ISOLATED" = 1 ] || reuse=1 ;;
    esac
fi
if [ "$reuse" = 0 ]; then
    if [ "$ISOLATED" = 1 ]; then make_venv; else make_venv --system-site-packages; fi
fi
install_checkout
where=$(imported_hpcem)
if [ "$where" != "$ROOT/hpcem" ]; then
    say "the environment imports hpcem from ${where:-nowhere}, not $ROOT/hpcem" \
        "(a non-editable install in the system packages hides an editable one):" \
        "making it again without the system packages"
    make_venv
    install_checkout
    where=$(imported_hpcem)
    [ "$where" = "$ROOT/hpcem" ] || die "$VENV still imports hpcem from ${where:-nowhere}"
fi
say "hpcem: $where (python $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])'), $VENV)"
exec 9>&-  # release the installer lock

# Everything below (the schedulers' jobs too) finds this environment's python and hpcem.
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
hash -r

if [ "$(id -u)" -eq 0 ]; then
    # RELION 3.1 (Debian) for the integration tests and outside-reference checks.
    if bash scripts/install-relion.sh >/tmp/hpcem-install-relion.log 2>&1; then
        say "$(tail -n 1 /tmp/hpcem-install-relion.log)"
    else
        echo "[run-tests] WARNING: could not install RELION (see /tmp/hpcem-install-relion.log);" \
            "its tests will skip" >&2
    fi
    for svc in slurm sge; do
        log=/tmp/hpcem-start-$svc.log
        if bash "scripts/start-$svc.sh" >"$log" 2>&1; then
            say "$svc is up ($(tail -n 1 "$log"))"
        else
            echo "[run-tests] WARNING: could not start $svc (see $log); its tests will skip:" >&2
            tail -n 5 "$log" >&2
        fi
    done
else
    echo "[run-tests] not root: SLURM and Grid Engine are not started and RELION is not" \
        "installed; their tests will skip" >&2
fi

# Lint and format are part of the suite: the same ruff version as in the [test] extra.
lint=0
say "ruff check + ruff format --check (hpcem protocols tests scripts)"
"$VENV/bin/python" -m ruff check -q hpcem protocols tests scripts || lint=1
"$VENV/bin/python" -m ruff format --check -q hpcem protocols tests scripts || lint=1
[ "$lint" -eq 0 ] || echo "[run-tests] ERROR: lint/format problems (above)" >&2

"$VENV/bin/python" -m pytest "$@"
status=$?
[ "$lint" -eq 0 ] || exit 1
exit "$status"
