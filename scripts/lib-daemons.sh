# lib-daemons.sh - helpers sourced by hpcem's start-*.sh scripts (not run on its own).
# Callers set MANIFEST_DIR/MANIFEST and define log/die before sourcing.
# shellcheck shell=bash

SHIM_DIR=/usr/local/lib/hpcem
SHIM=$SHIM_DIR/bind-loopback.so

pid_alive() {  # pid_alive PIDFILE COMM: the pid in PIDFILE is alive and its command is COMM
    local f=$1 comm=$2 pid
    [ -s "$f" ] || return 1
    pid=$(tr -dc '0-9' < "$f")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$comm" ]
}
record() {  # record PIDFILE COMM: remember that we started it (read by the stop script)
    mkdir -p "$MANIFEST_DIR"
    grep -qxF "$1 $2" "$MANIFEST" 2>/dev/null || echo "$1 $2" >> "$MANIFEST"
}
wait_for() {  # wait_for SECONDS WHAT CMD...: retry CMD every 0.5 s
    local end=$(( SECONDS + $1 )) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.5
    done
    log "$what: ok"
}
stop_pidfile() {  # stop_pidfile PIDFILE COMM: stop one of our daemons to restart it
    local pid
    pid_alive "$1" "$2" || return 0
    pid=$(tr -dc '0-9' < "$1")
    log "restarting $2 (pid $pid): config or packages changed"
    kill "$pid"
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || return 0; sleep 0.2; done
    die "$2 pid $pid did not stop"
}
install_if_changed() {  # install_if_changed NEW DEST MODE: returns 0 if DEST was (re)written
    if cmp -s "$1" "$2"; then return 1; fi
    [ ! -e "$2" ] || cp -p "$2" "$2.hpcem-bak"
    install -m "$3" "$1" "$2"
}
ensure_packages() {  # ensure_packages PKG...: apt-get install the missing ones; 0 if any added
    local p missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
    done
    [ -n "$missing" ] || return 1
    log "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    local tmp_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # keep package init scripts from starting daemons (we start them ourselves)
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
        tmp_policy=1
    fi
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >/dev/null
    [ -z "$tmp_policy" ] || rm -f /usr/sbin/policy-rc.d
    return 0
}
build_loopback_shim() {  # build_loopback_shim WORKDIR: LD_PRELOAD lib, bind(ANY) -> loopback
    local src=$1/bind-loopback.c
    cat > "$src" <<'EOF'
/* hpcem bind-loopback: bind() to INADDR_ANY / in6addr_any becomes bind() to loopback. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real_bind)(int, const struct sockaddr *, socklen_t);
    if (!real_bind) real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in a; memcpy(&a, addr, sizeof a);
        if (a.sin_addr.s_addr == htonl(INADDR_ANY)) {
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return real_bind(fd, (const struct sockaddr *)&a, sizeof a);
        }
    } else if (addr && addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 a; memcpy(&a, addr, sizeof a);
        if (IN6_IS_ADDR_UNSPECIFIED(&a.sin6_addr)) {
            a.sin6_addr = in6addr_loopback;
            return real_bind(fd, (const struct sockaddr *)&a, sizeof a);
        }
    }
    return real_bind(fd, addr, len);
}
EOF
    if [ -s "$SHIM" ] && cmp -s "$src" "$SHIM_DIR/bind-loopback.c"; then return 0; fi
    log "building $SHIM"
    mkdir -p "$SHIM_DIR"
    cc -O2 -shared -fPIC -o "$1/bind-loopback.so" "$src" -ldl
    install -m 0755 "$1/bind-loopback.so" "$SHIM"
    install -m 0644 "$src" "$SHIM_DIR/bind-loopback.c"
}
stop_all() {  # stop_all "COMM..." GRACE_S: per COMM in order, TERM all recorded pids, KILL late
    local comm f c pid pids
    for comm in $1; do
        pids=""
        while read -r f c; do
            [ "$c" = "$comm" ] || continue
            if pid_alive "$f" "$c"; then
                pid=$(tr -dc '0-9' < "$f")
                log "stopping $c pid $pid"
                kill -TERM "$pid" 2>/dev/null || true
                pids="$pids $pid"
            fi
        done < "$MANIFEST"
        for _ in $(seq $(( $2 * 10 ))); do
            local alive=""
            for pid in $pids; do [ -d "/proc/$pid" ] && alive=1; done
            [ -z "$alive" ] && break
            sleep 0.1
        done
        for pid in $pids; do
            if [ -d "/proc/$pid" ]; then log "pid $pid still alive after $2 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
        done
    done
}
