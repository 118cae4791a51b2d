#!/usr/bin/env bash
# Install RELION 3.1 from Debian (package `relion`, programs relion_* in /usr/bin) for the
# integration tests and the side-by-side benchmarks. Idempotent; needs root.
# Without it the tests that call RELION skip and say so.
set -euo pipefail
log() { echo "[install-relion] $*"; }
die() { echo "[install-relion] ERROR: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (apt-get install relion)"
if dpkg-query -W -f='${Status}' relion 2>/dev/null | grep -q 'install ok installed'; then
    log "RELION already installed: $(dpkg-query -W -f='${Version}' relion)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends relion >/dev/null || die "apt-get install relion failed"
command -v relion_refine >/dev/null || die "relion installed but relion_refine not on PATH"
log "RELION installed: $(dpkg-query -W -f='${Version}' relion)"
