#!/bin/bash
# Entrypoint of the ktpy shadow pod, installed as
# /usr/local/bin/ktpy-shadow-entrypoint. Runs sshd (the tunnel end) and
# dnsmasq (cluster DNS for the laptop) as kt, uid 10001, with no privileges;
# with KTPY_ROLE=router, HAProxy (the mesh router) instead of dnsmasq.
# It exits non-zero as soon as either dies, so Kubernetes restarts the
# container and the tcpSocket readiness probe fails, and it forwards
# SIGTERM/SIGINT to both (it is PID 1: without a trap the kernel would drop
# those signals).
#
# Environment: KTPY_SSH_PORT (2222), KTPY_DNS_PORT (5353, not used by the
# router), KTPY_ROLE (router changes the daemons, the rest is only logged).
# KTPY_SECRET_DIR and KTPY_RUN_DIR exist for local experiments.
set -euo pipefail

secret_dir=${KTPY_SECRET_DIR:-/etc/ktpy/secret}
run_dir=${KTPY_RUN_DIR:-/tmp/ktpy}
ssh_port=${KTPY_SSH_PORT:-2222}
dns_port=${KTPY_DNS_PORT:-5353}
role=${KTPY_ROLE:-}

log() { printf 'ktpy-shadow: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for p in "$ssh_port" "$dns_port"; do
    case $p in ''|*[!0-9]*) die "ports must be numbers, got '$p'";; esac
    if [ "${#p}" -gt 5 ] || [ "$p" -lt 1 ] || [ "$p" -gt 65535 ]; then
        die "port out of range: $p"
    fi
done

log "starting role=${role:-unset} uid=$(id -u) gid=$(id -g) ssh_port=$ssh_port dns_port=$dns_port"
# Root is never intended (and sshd would then want /run/sshd): say so plainly.
[ "$(id -u)" != 0 ] || die "running as root; the pod must set runAsUser 10001 (runAsNonRoot)"

# The Secret's files are root-owned and group/world readable, which sshd
# refuses for a host key: copy them into a directory only we can read. The
# router's Secret also holds HAProxy's config and the routes it starts with
# (versions.map, which the config names in the run dir).
files=(authorized_keys ssh_host_ed25519_key ssh_host_ed25519_key.pub)
if [ "$role" = router ]; then
    files+=(haproxy.cfg versions.map)
fi
umask 077
mkdir -p "$run_dir"
chmod 0700 "$run_dir"
for f in "${files[@]}"; do
    [ -r "$secret_dir/$f" ] ||
        die "cannot read $secret_dir/$f: mount the session Secret there, readable by uid 10001 (defaultMode 0440 with fsGroup 10001, or 0444)"
    # rm + cat rather than cp: a file left by an earlier run (emptyDir) or
    # the Secret's own mode must not decide the copy's mode.
    rm -f "$run_dir/$f"
    cat "$secret_dir/$f" >"$run_dir/$f"
done
if [ "$role" = router ]; then
    # One key per developer meshing the Service, added and removed while the
    # router runs: sshd reads the mounted file itself at each login, so the
    # kubelet's updates of the Secret count without a restart. Routing goes
    # on with no key at all (the last developer has just left).
    authorized_keys=$secret_dir/authorized_keys
    log "host key $(ssh-keygen -lf "$run_dir/ssh_host_ed25519_key.pub" | cut -d' ' -f2)," \
        "$(grep -c '^ssh-ed25519 ' "$run_dir/authorized_keys" || true) session key(s)," \
        "$(grep -c . "$run_dir/versions.map" || true) route(s)"
else
    authorized_keys=$run_dir/authorized_keys
    grep -q '^ssh-ed25519 ' "$run_dir/authorized_keys" ||
        die "$secret_dir/authorized_keys holds no ssh-ed25519 key"
    if command -v ssh-keygen >/dev/null; then
        log "host key $(ssh-keygen -lf "$run_dir/ssh_host_ed25519_key.pub" | cut -d' ' -f2)," \
            "client key $(ssh-keygen -lf "$run_dir/authorized_keys" | head -n1 | cut -d' ' -f2)"
    fi
fi

ssh_pid=
aux_pid=
stopping=
stop() {
    stopping=1
    # Either pid may still be empty if the signal came during start-up.
    kill -TERM $ssh_pid $aux_pid 2>/dev/null || true
}
trap stop TERM INT

if [ "$role" = router ]; then
    # In the foreground (-db), one process: SIGTERM stops it at once.
    aux_name=haproxy
    haproxy -db -f "$run_dir/haproxy.cfg" &
else
    aux_name=dnsmasq
    dnsmasq --conf-file=/etc/ktpy/dnsmasq.conf \
        --port="$dns_port" --pid-file="$run_dir/dnsmasq.pid" &
fi
aux_pid=$!
# Each channel's input buffer is a 32 KiB heap block that glibc keeps once the
# channel closes (it returns heap only from the top), so a session that once
# held many connections kept their memory: blocks of 32 KiB and more get their
# own mappings instead and go back when freed. sshd re-executes itself per
# connection with this environment. (docs/performance.md, the shadow pod.)
export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.mmap_threshold=32768"
# sshd needs its absolute path to re-execute itself per connection.
/usr/sbin/sshd -D -e -f /etc/ktpy/sshd_config \
    -o "Port=$ssh_port" \
    -o "HostKey=$run_dir/ssh_host_ed25519_key" \
    -o "AuthorizedKeysFile=$authorized_keys" \
    -o "PidFile=$run_dir/sshd.pid" &
ssh_pid=$!
[ -z "$stopping" ] || stop

wait_both() {
    while kill -0 "$ssh_pid" 2>/dev/null || kill -0 "$aux_pid" 2>/dev/null; do
        wait "$ssh_pid" "$aux_pid" 2>/dev/null || true
    done
}

while :; do
    rc=0
    done_pid=
    wait -n -p done_pid "$aux_pid" "$ssh_pid" || rc=$?
    if [ -n "$stopping" ]; then
        wait_both
        log "stopped on request"
        exit 0
    fi
    # No pid: wait was interrupted by a signal we do not act on.
    [ -n "${done_pid:-}" ] || continue
    if [ "$done_pid" = "$aux_pid" ]; then name=$aux_name; else name=sshd; fi
    log "$name exited with status $rc; stopping the pod's container"
    kill -TERM "$ssh_pid" "$aux_pid" 2>/dev/null || true
    wait_both
    [ "$rc" -ne 0 ] || rc=1
    exit "$rc"
done
