#!/usr/bin/env bash
# A real DIRAC WMS and Data Management (DISET dips:// services, a StorageElement SE-1 and the File Catalog,
# MariaDB, a JobAgent as local pilot) on this machine, inside a network namespace that only has 'lo'.
# Needs root and what `bash setup.sh test` installs.
#
#   bash tests/lab/lab.sh up                 start (idempotent; quick when already up and healthy)
#   bash tests/lab/lab.sh down               stop everything it started, remove the netns
#   bash tests/lab/lab.sh status             which processes run and which services answer
#   eval "$(bash tests/lab/lab.sh env)"      client environment (then: ip netns exec gridlab <cmd>)
#   bash tests/lab/lab.sh run CMD...         run CMD inside the netns with the client environment
#   bash tests/lab/lab.sh wan on|off         50 ms round trip on the namespace's loopback (user-space delay)
#   bash tests/lab/lab.sh jobagent start|stop|status|kick   (kick: restart it once no job runs)
#   bash tests/lab/lab.sh kill-waiting       kill every job not yet matched (Received/Checking/Waiting)
#   bash tests/lab/lab.sh services stop|start  an outage: stop the services and optimizers, keeping all state
#   bash tests/lab/lab.sh service NAME stop|start   one service only, e.g. StorageElement or FileCatalog
#   bash tests/lab/lab.sh cs-set /PATH=VALUE...     change options on the running CS ('/PATH=' deletes)
#   bash tests/lab/lab.sh cs-get /PATH...           options as the running CS serves them
#   bash tests/lab/lab.sh logs               list the log files (one per process)
#
# Environment: LAB (state dir, default tests/lab/.lab), NS (netns, default gridlab), VENV (default <repo>/.venv),
# DBPREFIX (default gridlab_; the lab's MariaDB account DBUSER defaults to <DBPREFIX>dirac), MAXPARAM (JobManager
# MaxParametricJobs, 100), JA_POLL (JobAgent polling, 2 s), DELAY_MS (one-way delay of 'wan on', 25), LAB_JOBAGENT=off (up without starting the JobAgent).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VENV=${VENV:-$REPO/.venv}
LAB=$(realpath -m "${LAB:-$HERE/.lab}")
NS=${NS:-gridlab}
DBPREFIX=${DBPREFIX:-gridlab_}
DBUSER=${DBUSER:-${DBPREFIX}dirac}
DBPASS=${DBPASS:-gridlabpw}
MAXPARAM=${MAXPARAM:-100}
JA_POLL=${JA_POLL:-2}
DELAY_MS=${DELAY_MS:-25}
export LAB VENV DBPREFIX DBUSER DBPASS MAXPARAM JA_POLL
. "$HERE/lab_cfg.sh"

PROXY=$LAB/pki/proxy.pem
CADIR=$LAB/pki/certificates
# name:DIRAC component:port, in start order (OptimizationMind before the Matcher: both create the
# TaskQueueDB's extra tables at start-up and race when started together)
SERVICES="cs:Configuration/Server:9135 OptimizationMind:WorkloadManagement/OptimizationMind:9175
JobManager:WorkloadManagement/JobManager:9132 JobMonitoring:WorkloadManagement/JobMonitoring:9130
JobStateUpdate:WorkloadManagement/JobStateUpdate:9136 SandboxStore:WorkloadManagement/SandboxStore:9196
Matcher:WorkloadManagement/Matcher:9170 ResourceStatus:ResourceStatus/ResourceStatus:9160
FileCatalog:DataManagement/FileCatalog:9197 StorageElement:DataManagement/StorageElement:9148"
PORTS=$(for s in $SERVICES; do printf '%s ' "${s##*:}"; done)

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }
say() { echo "lab: $*"; }
die() { echo "lab: ERROR: $*" >&2; exit 1; }

# Environment of every lab process: nothing inherited but the basics (CA bundles such as REQUESTS_CA_BUNDLE
# or CURL_CA_BUNDLE would override DIRAC's CA directory for its https calls).
base_env() {
    printf '%s\0' "PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        "HOME=${HOME:-/root}" "LANG=C.UTF-8" "TMPDIR=${TMPDIR:-/tmp}" "VIRTUAL_ENV=$VENV" \
        "PYTHONUNBUFFERED=1" "X509_CERT_DIR=$CADIR"
}

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$NS"; }

# --------------------------------------------------------------------------------- processes by recorded PID
# $LAB/run/<name>.pid holds the PID and a string its command line must contain (guards against PID reuse).
alive() { # name
    local f=$LAB/run/$1.pid pid match
    [ -f "$f" ] || return 1
    { read -r pid; read -r match; } < "$f" || true
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$match"
}
pid_of() { head -1 "$LAB/run/$1.pid" 2>/dev/null; }

# spawn NAME MATCH CWD VAR=VAL... -- CMD...: start CMD in the netns, in its own session, log to logs/NAME.log
spawn() {
    local name=$1 match=$2 cwd=$3; shift 3
    local vars=()
    while [ "$1" != "--" ]; do vars+=("$1"); shift; done; shift
    local log=$LAB/logs/$name.log
    local envs=(); mapfile -d '' envs < <(base_env)
    echo "=== $(date '+%F %T') start: $*" >> "$log"
    # setsid: own session and process group (PID = PGID), so 'down' also ends the children (job payloads);
    # ip netns exec and env exec, so the recorded PID is the DIRAC process itself.
    ( cd "$cwd" && exec setsid ip netns exec "$NS" env -i "${envs[@]}" "${vars[@]}" "$@" ) >> "$log" 2>&1 < /dev/null &
    local pid=$! i
    printf '%s\n%s\n' "$pid" "$match" > "$LAB/run/$name.pid"
    # Until the subshell has exec'd, /proc/PID/cmdline is this script's and 'alive' says no: wait for the
    # exec (up to 10 s on a loaded machine), so that 'alive' right after a spawn means what it says.
    for i in $(seq 1 200); do alive "$name" && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
}

stop_proc() { # name
    local f=$LAB/run/$1.pid pid i
    [ -f "$f" ] || return 0
    if alive "$1"; then
        pid=$(pid_of "$1")
        if [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ]; then kill -TERM -- "-$pid" 2>/dev/null || true
        else kill -TERM "$pid" 2>/dev/null || true; fi
        for i in $(seq 1 50); do alive "$1" || break; sleep 0.1; done
        if alive "$1"; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
        say "stopped $1 ($pid)"
    fi
    rm -f "$f"
}

ports_open() { # port... : all accept a TCP connection inside the netns
    ip netns exec "$NS" bash -c 'for p; do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || exit 1; done' _ "$@"
}
wait_ports() { # timeout port...
    local t=$1; shift; local end=$(( $(date +%s) + t ))
    until ports_open "$@"; do
        [ "$(date +%s)" -lt $end ] || return 1
        sleep 0.2
    done
}

fingerprint() {
    { cat "$HERE/lab.sh" "$HERE/lab_cfg.sh" "$HERE/jobagent.py"; echo "$VENV $NS $DBPREFIX $DBUSER $MAXPARAM $JA_POLL $LAB"; } | sha1sum | cut -d' ' -f1
}

# ------------------------------------------------------------------------------------------------- pieces
preflight() {
    [ "$(id -u)" = 0 ] || die "must run as root (network namespace, MariaDB, iptables)"
    ip netns list >/dev/null 2>&1 || die "'ip netns' does not work here"
    [ -x "$VENV/bin/dirac-service" ] || die "no DIRAC in $VENV: run 'bash setup.sh test' (it installs the server side)"
    "$VENV/bin/python" -c 'import MySQLdb' 2>/dev/null || die "DIRAC[server] missing in $VENV: run 'bash setup.sh test'"
    command -v mysqladmin >/dev/null || die "MariaDB missing: run 'bash setup.sh test'"
    command -v openssl >/dev/null || die "openssl missing (apt-get install openssl)"
    command -v iptables >/dev/null || echo "lab: warning: no iptables, 'wan on' will not work" >&2
}

netns_up() {
    ns_exists || ip netns add "$NS"
    ip netns exec "$NS" ip link set lo up
}

proxy_ok() { [ -s "$PROXY" ] && openssl x509 -in "$PROXY" -noout -checkend 3600 >/dev/null 2>&1; }

make_proxy() {
    # X509_USER_PROXY must not name an existing proxy: dirac-proxy-init reads it while the CS is still
    # disabled, caches "DN not registered" and then fails. Write a new file and move it into place.
    local envs=(); mapfile -d '' envs < <(base_env)
    rm -f "$PROXY.new"
    ip netns exec "$NS" env -i "${envs[@]}" "DIRAC_ROOT_PATH=$LAB/client" "X509_USER_PROXY=$PROXY.new" \
        "$VENV/bin/dirac-proxy-init" -C "$LAB/pki/usercert.pem" -K "$LAB/pki/userkey.pem" \
        -g labvo_user -N -u "$PROXY.new" -v 72:00 && mv -f "$PROXY.new" "$PROXY"
}

# client_exec CMD...: run CMD inside the netns with the client environment
client_exec() {
    local envs=(); mapfile -d '' envs < <(base_env)
    ip netns exec "$NS" env -i "${envs[@]}" "DIRAC_ROOT_PATH=$LAB/client" "X509_USER_PROXY=$PROXY" \
        "GRID_LAB_NS=$NS" "GRID_LAB_DIR=$LAB" "GRID_LAB_DBPREFIX=$DBPREFIX" "$@"
}

jobagent_start() {
    alive jobagent && return 0
    proxy_ok || die "no valid user proxy; run 'lab.sh up'"
    mkdir -p "$LAB/pilot/work"
    # jobagent.py = dirac-agent WorkloadManagement/JobAgent with its idle back-off capped (see there)
    spawn jobagent "$HERE/jobagent.py" "$LAB/pilot/work" \
        "DIRAC_ROOT_PATH=$LAB/pilot" "X509_USER_PROXY=$PROXY" -- \
        "$VENV/bin/python" "$HERE/jobagent.py"
    sleep 0.3
    alive jobagent || die "JobAgent did not start, see $LAB/logs/jobagent.log"
    say "JobAgent running (pid $(pid_of jobagent), polling every ${JA_POLL} s), log $LAB/logs/jobagent.log"
}

healthy() {
    [ -f "$LAB/run/fingerprint" ] && [ "$(cat "$LAB/run/fingerprint")" = "$(fingerprint)" ] || { echo "config changed or never started"; return 1; }
    ns_exists || { echo "no netns $NS"; return 1; }
    mysqladmin ping >/dev/null 2>&1 || { echo "MariaDB down"; return 1; }
    local s
    for s in $SERVICES; do alive "${s%%:*}" || { echo "${s%%:*} not running"; return 1; }; done
    alive optimizers || { echo "optimizers not running"; return 1; }
    # shellcheck disable=SC2086
    ports_open $PORTS || { echo "a service port does not answer"; return 1; }
}

stop_all() {
    wan_off quiet
    stop_proc jobagent
    stop_proc optimizers
    local s names=()
    for s in $SERVICES; do names=("${s%%:*}" "${names[@]}"); done
    for s in "${names[@]}"; do stop_proc "$s"; done
}

# The DISET services, in order (CS first, OptimizationMind before the Matcher), then wait until all answer.
services_start() {
    local s name comp port
    alive cs || spawn cs "Configuration/Server" "$LAB/server" "DIRAC_ROOT_PATH=$LAB/server" \
        "DIRACSYSCONFIG=$LAB/server/etc/cs.cfg" -- "$VENV/bin/dirac-service" Configuration/Server
    wait_ports 60 9135 || die "Configuration Server does not answer, see $LAB/logs/cs.log"
    alive OptimizationMind || spawn OptimizationMind "WorkloadManagement/OptimizationMind" "$LAB/server" \
        "DIRAC_ROOT_PATH=$LAB/server" -- "$VENV/bin/dirac-service" WorkloadManagement/OptimizationMind
    wait_ports 60 9175 || die "OptimizationMind does not answer, see $LAB/logs/OptimizationMind.log"
    for s in $SERVICES; do
        IFS=: read -r name comp port <<< "$s"
        alive "$name" && continue
        spawn "$name" "$comp" "$LAB/server" "DIRAC_ROOT_PATH=$LAB/server" -- "$VENV/bin/dirac-service" "$comp"
    done
    for s in $SERVICES; do
        IFS=: read -r name comp port <<< "$s"
        wait_ports 90 "$port" || die "$name ($comp, port $port) does not answer, see $LAB/logs/$name.log"
    done
}

optimizers_start() {
    alive optimizers || spawn optimizers "WorkloadManagement/Optimizers" "$LAB/server" "DIRAC_ROOT_PATH=$LAB/server" -- \
        "$VENV/bin/dirac-executor" WorkloadManagement/Optimizers
}

# An outage: every service and the optimizers stop; databases, sandboxes and the JobAgent are left as they are.
cmd_services() {
    mkdir -p "$LAB/run" "$LAB/logs"
    local s names=()
    case "${1:-}" in
        stop)
            stop_proc optimizers
            for s in $SERVICES; do names=("${s%%:*}" "${names[@]}"); done
            for s in "${names[@]}"; do stop_proc "$s"; done
            say "services stopped (state kept; 'lab.sh services start' brings them back)" ;;
        start)
            ns_exists || die "lab is not up"
            local t; t=$(now)
            services_start
            optimizers_start
            say "services answer again: $(since "$t") s" ;;
        *) die "usage: lab.sh services stop|start" ;;
    esac
}

# ------------------------------------------------------------------------------------------------ commands
cmd_up() {
    local t0; t0=$(now)
    preflight
    mkdir -p "$LAB/run" "$LAB/logs"
    local why
    if why=$(healthy); then
        proxy_ok || make_proxy > "$LAB/logs/proxy-init.log" 2>&1 || die "dirac-proxy-init failed, see $LAB/logs/proxy-init.log"
        [ "${LAB_JOBAGENT:-on}" = off ] || jobagent_start >/dev/null
        say "already up ($(since "$t0") s); logs in $LAB/logs"
        return 0
    fi
    say "starting ($why)"
    stop_all
    # fresh state: databases, sandboxes, pilot work area; previous logs kept in logs/previous/
    rm -rf "$LAB/logs/previous"; mkdir -p "$LAB/logs/previous"
    find "$LAB/logs" -maxdepth 1 -type f -exec mv -t "$LAB/logs/previous" {} +
    rm -rf "$LAB/storage" "$LAB/pilot/work" "$LAB/pilot/control" "$LAB/server/control" "$LAB/server/work"
    local t; t=$(now)
    lab_pki > "$LAB/logs/pki.log" 2>&1 || die "PKI failed, see $LAB/logs/pki.log"
    lab_cfg
    mariadb_up
    local diracdir
    diracdir=$(ls -d "$VENV"/lib/python3*/site-packages/DIRAC | head -1)
    lab_db "$diracdir" > "$LAB/logs/db.log" 2>&1 || die "database creation failed, see $LAB/logs/db.log"
    netns_up
    say "pki, cfg, databases, netns: $(since "$t") s"

    t=$(now)
    services_start
    say "services answer: $(since "$t") s"

    t=$(now)
    optimizers_start
    # sites, CEs and the SEs Active in ResourceStatus (JobScheduling needs the site, and a StorageElement
    # object takes its read/write access from ResourceStatus: SE-1 unknown there is not usable), and the
    # user proxy, in parallel
    local envs=(); mapfile -d '' envs < <(base_env)
    ip netns exec "$NS" env -i "${envs[@]}" "DIRAC_ROOT_PATH=$LAB/server" \
        "$VENV/bin/dirac-rss-sync" --element all --defaultStatus Active > "$LAB/logs/rss-sync.log" 2>&1 &
    local rss=$!
    make_proxy > "$LAB/logs/proxy-init.log" 2>&1 || die "dirac-proxy-init failed, see $LAB/logs/proxy-init.log"
    wait $rss || die "dirac-rss-sync failed, see $LAB/logs/rss-sync.log"
    alive optimizers || die "Optimizers executor died, see $LAB/logs/optimizers.log"
    say "proxy, resource status, optimizers: $(since "$t") s"
    fingerprint > "$LAB/run/fingerprint"
    [ "${LAB_JOBAGENT:-on}" = off ] || jobagent_start
    say "up in $(since "$t0") s; logs in $LAB/logs; client env: eval \"\$(bash $HERE/lab.sh env)\""
}

cmd_down() {
    [ "$(id -u)" = 0 ] || die "must run as root"
    if [ -d "$LAB/run" ]; then
        stop_all
        rm -f "$LAB/run/fingerprint"
        if [ -f "$LAB/run/mariadb.started-by-lab" ] && mysqladmin ping >/dev/null 2>&1; then
            # stop MariaDB only if this lab started it and nobody else is connected
            local others
            others=$(mysql -uroot -N -e "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND COMMAND NOT IN ('Daemon') AND USER NOT IN ('system user', 'event_scheduler')" 2>/dev/null || echo 1)
            if [ "$others" = 0 ]; then
                /etc/init.d/mariadb stop > /dev/null 2>&1 && say "stopped MariaDB (started by the lab)"
                rm -f "$LAB/run/mariadb.started-by-lab"
            else
                say "MariaDB left running: $others other connection(s)"
            fi
        fi
    fi
    if ns_exists; then
        for T in iptables ip6tables; do
            while ip netns exec "$NS" "$T" -D OUTPUT -o lo -j NFQUEUE --queue-num 0 --queue-bypass 2>/dev/null; do :; done
        done
        ip netns del "$NS" && say "deleted netns $NS"
    fi
    say "down"
}

cmd_status() {
    local s name comp port rc=0
    ns_exists && echo "netns $NS: present" || { echo "netns $NS: absent"; rc=1; }
    mysqladmin ping >/dev/null 2>&1 && echo "MariaDB: running" || { echo "MariaDB: not running"; rc=1; }
    for s in $SERVICES optimizers:WorkloadManagement/Optimizers:- jobagent:WorkloadManagement/JobAgent_via_jobagent.py:- nfq_delay:nfq_delay:-; do
        IFS=: read -r name comp port <<< "$s"
        if alive "$name"; then printf '  %-17s running  pid %-7s %s\n' "$name" "$(pid_of "$name")" "$comp"
        else printf '  %-17s stopped\n' "$name"; [[ $name = jobagent || $name = nfq_delay ]] || rc=1; fi
    done
    if ns_exists && proxy_ok; then
        echo "DISET ping (client config, user proxy):"
        local urls=""
        for s in $SERVICES; do IFS=: read -r name comp port <<< "$s"; urls+="dips://localhost:$port/$comp "; done
        # shellcheck disable=SC2086
        client_exec "$VENV/bin/python" - $urls <<'PY' || rc=1
import sys, time
import DIRAC
DIRAC.initialize()
from DIRAC.Core.Base.Client import Client
bad = 0
for url in sys.argv[1:]:
    t = time.monotonic()
    r = Client(url=url).ping()
    ms = (time.monotonic() - t) * 1000
    print(f"  {url:60s} {'answers' if r['OK'] else 'ERROR ' + r['Message'][:60]} ({ms:.0f} ms)")
    bad += not r["OK"]
sys.exit(1 if bad else 0)
PY
    fi
    return $rc
}

cmd_env() {
    cat <<EOF
# DIRAC lab client environment (lab $LAB). The services listen only inside network namespace '$NS':
# run clients there, e.g.  ip netns exec $NS $VENV/bin/dirac-wms-job-status 1
export DIRAC_ROOT_PATH=$(printf %q "$LAB/client")
export X509_CERT_DIR=$(printf %q "$CADIR")
export X509_USER_PROXY=$(printf %q "$PROXY")
export GRID_LAB_NS=$(printf %q "$NS")
export GRID_LAB_DIR=$(printf %q "$LAB")
export GRID_LAB_DBPREFIX=$(printf %q "$DBPREFIX")
export PATH=$(printf %q "$VENV/bin"):\$PATH
unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE DIRACSYSCONFIG DIRAC_USE_TORNADO_IOLOOP X509_USER_CERT X509_USER_KEY
EOF
}

wan_on() {
    ns_exists || die "netns $NS does not exist: run 'lab.sh up' first"
    if ! alive nfq_delay; then
        : > "$LAB/logs/nfq_delay.log"
        spawn nfq_delay "nfq_delay.py" "$LAB" -- "$VENV/bin/python" "$HERE/nfq_delay.py" "$DELAY_MS"
        local i
        # up to 30 s: on a loaded machine (several labs on 2 cores) its imports alone can take 5 s
        for i in $(seq 1 300); do grep -q "^delaying" "$LAB/logs/nfq_delay.log" && break; alive nfq_delay || break; sleep 0.1; done
        grep -q "^delaying" "$LAB/logs/nfq_delay.log" ||
            { stop_proc nfq_delay > /dev/null
              die "nfq_delay.py did not start; the end of $LAB/logs/nfq_delay.log:
$(tail -n 15 "$LAB/logs/nfq_delay.log")"; }
    fi
    ip netns exec "$NS" iptables -C OUTPUT -o lo -j NFQUEUE --queue-num 0 --queue-bypass 2>/dev/null ||
        ip netns exec "$NS" iptables -A OUTPUT -o lo -j NFQUEUE --queue-num 0 --queue-bypass
    # IPv6 loopback too, where the kernel has ip6tables (DIRAC's clients here connect over IPv4)
    ip netns exec "$NS" ip6tables -C OUTPUT -o lo -j NFQUEUE --queue-num 0 --queue-bypass 2>/dev/null ||
        ip netns exec "$NS" ip6tables -A OUTPUT -o lo -j NFQUEUE --queue-num 0 --queue-bypass 2>/dev/null ||
        echo "lab: warning: ip6tables rule not added (IPv6 loopback not delayed)" >&2
    say "wan on: ${DELAY_MS} ms per packet on $NS/lo ($((2 * DELAY_MS)) ms round trip), pid $(pid_of nfq_delay)"
}

wan_off() {
    if ns_exists; then
        for T in iptables ip6tables; do
            while ip netns exec "$NS" "$T" -D OUTPUT -o lo -j NFQUEUE --queue-num 0 --queue-bypass 2>/dev/null; do :; done
        done
    fi
    stop_proc nfq_delay > /dev/null
    [ "${1:-}" = quiet ] || say "wan off"
}

cmd_wan() {
    mkdir -p "$LAB/run" "$LAB/logs"
    case "${1:-}" in
        on) wan_on ;;
        off) wan_off ;;
        *) die "usage: lab.sh wan on|off" ;;
    esac
}

# Kill the jobs not yet matched (Received, Checking, Waiting): leftovers of a test that stopped the JobAgent
# would otherwise keep the single JobAgent busy for the next tests.
cmd_kill_waiting() {
    proxy_ok || die "no valid user proxy; run 'lab.sh up'"
    client_exec "$VENV/bin/python" - <<'PY' 2>&1 | grep '^lab:'
import sys
import DIRAC
DIRAC.initialize()
from DIRAC.WorkloadManagementSystem.Client.JobManagerClient import JobManagerClient
from DIRAC.WorkloadManagementSystem.Client.JobMonitoringClient import JobMonitoringClient
res = JobMonitoringClient().getJobs({"Status": ["Received", "Checking", "Waiting"]})
if not res["OK"]:
    sys.exit(f"lab: getJobs: {res['Message']}")
ids = sorted(int(i) for i in res["Value"])
if ids:
    res = JobManagerClient().killJob(ids)
    if not res["OK"]:
        sys.exit(f"lab: killJob: {res['Message']}")
print(f"lab: killed {len(ids)} unmatched job(s)")
PY
}

cmd_jobagent() {
    mkdir -p "$LAB/run" "$LAB/logs"
    case "${1:-}" in
        start|on) ns_exists || die "lab is not up"; jobagent_start ;;
        stop|off) stop_proc jobagent; say "JobAgent stopped" ;;
        status) if alive jobagent; then echo "running (pid $(pid_of jobagent))"; else echo "stopped"; return 1; fi ;;
        kick) ns_exists || die "lab is not up"; jobagent_kick ;;
        *) die "usage: lab.sh jobagent start|stop|status|kick" ;;
    esac
}

# One service of $SERVICES stopped or started, the rest left running (a storage element or catalogue outage).
cmd_service() {
    mkdir -p "$LAB/run" "$LAB/logs"
    local name=${1:-} action=${2:-} s n comp port found=
    for s in $SERVICES; do
        IFS=: read -r n comp port <<< "$s"
        [ "$n" = "$name" ] && { found=1; break; }
    done
    [ -n "$found" ] || die "usage: lab.sh service NAME stop|start; NAME one of: $(for s in $SERVICES; do printf '%s ' "${s%%:*}"; done)"
    case "$action" in
        stop) stop_proc "$name"; say "$name stopped" ;;
        start)
            ns_exists || die "lab is not up"
            local t; t=$(now)
            if ! alive "$name"; then
                if [ "$name" = cs ]; then
                    spawn cs "Configuration/Server" "$LAB/server" "DIRAC_ROOT_PATH=$LAB/server" \
                        "DIRACSYSCONFIG=$LAB/server/etc/cs.cfg" -- "$VENV/bin/dirac-service" Configuration/Server
                else
                    spawn "$name" "$comp" "$LAB/server" "DIRAC_ROOT_PATH=$LAB/server" -- "$VENV/bin/dirac-service" "$comp"
                fi
            fi
            wait_ports 90 "$port" || die "$name ($comp, port $port) does not answer, see $LAB/logs/$name.log"
            say "$name answers: $(since "$t") s" ;;
        *) die "usage: lab.sh service NAME stop|start" ;;
    esac
}

# server_exec CMD...: run CMD inside the netns as the services do (host certificate, server config)
server_exec() {
    local envs=(); mapfile -d '' envs < <(base_env)
    ip netns exec "$NS" env -i "${envs[@]}" "DIRAC_ROOT_PATH=$LAB/server" "$@"
}

# Change options on the running Configuration Server (CSAPI commit with the host certificate, a
# CSAdministrator). Every process started afterwards sees them, each job's JobWrapper included; the CS
# writes them to server/etc/LabConfig.cfg. Options also set in a local dirac.cfg would shadow them.
cmd_cs_set() {
    [ $# -gt 0 ] || die "usage: lab.sh cs-set /PATH=VALUE... ('/PATH=' deletes the option)"
    ns_exists || die "lab is not up"
    mkdir -p "$LAB/logs"
    local rc=0
    server_exec "$VENV/bin/python" - "$@" > "$LAB/logs/cs-set.log" 2>&1 <<'PY' || rc=$?
import sys
import DIRAC
DIRAC.initialize()
from DIRAC.ConfigurationSystem.Client.CSAPI import CSAPI
cs = CSAPI()
for arg in sys.argv[1:]:
    path, sep, value = arg.partition("=")
    if not sep or not path.startswith("/"):
        sys.exit(f"lab: ERROR: not /PATH=VALUE: {arg}")
    res = cs.delOption(path) if value == "" else cs.setOption(path, value)
    if not res["OK"]:
        sys.exit(f"lab: ERROR: {path}: {res['Message']}")
res = cs.commit()
if not res["OK"]:
    sys.exit(f"lab: ERROR: commit: {res['Message']}")
print("lab: CS: " + ", ".join(sys.argv[1:]))
PY
    grep '^lab:' "$LAB/logs/cs-set.log" || true
    [ $rc = 0 ] || die "cs-set failed, see $LAB/logs/cs-set.log"
}

# Options as a new client process gets them from the running CS, one "PATH = VALUE" line each.
cmd_cs_get() {
    [ $# -gt 0 ] || die "usage: lab.sh cs-get /PATH..."
    client_exec "$VENV/bin/python" - "$@" <<'PY' 2>&1 | grep '^/'
import sys
import DIRAC
DIRAC.initialize()
from DIRAC import gConfig
for path in sys.argv[1:]:
    print(f"{path} = {gConfig.getValue(path, '')}")
PY
}

# Restart the JobAgent once it runs no job (its payloads are its children): a fresh agent, a fresh
# configuration, no idle back-off. Waits up to 300 s for a running job to end.
jobagent_kick() {
    if alive jobagent; then
        local pid i; pid=$(pid_of jobagent)
        for i in $(seq 1 600); do
            [ -z "$(ps -o pid= --ppid "$pid" 2>/dev/null)" ] && break
            sleep 0.5
        done
        stop_proc jobagent > /dev/null
    fi
    jobagent_start
}

# up, down, wan and jobagent run one at a time per lab. The lock is held by flock(1) itself (-o: not
# passed on), so the daemons started here (and MariaDB) do not inherit it.
case "${1:-}" in
    up|down|wan|jobagent|services|service)
        if [ -z "${_LAB_LOCKED:-}" ]; then
            mkdir -p "$LAB/run"
            export _LAB_LOCKED=1
            exec flock -o "$LAB/run/lock" bash "$0" "$@"
        fi ;;
esac

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    run) shift; [ $# -gt 0 ] || die "usage: lab.sh run CMD..."; client_exec "$@" ;;
    wan) shift; cmd_wan "$@" ;;
    jobagent) shift; cmd_jobagent "$@" ;;
    services) shift; cmd_services "$@" ;;
    service) shift; cmd_service "$@" ;;
    cs-set) shift; cmd_cs_set "$@" ;;
    cs-get) shift; cmd_cs_get "$@" ;;
    kill-waiting) cmd_kill_waiting ;;
    logs) ls -l "$LAB/logs" ;;
    *) sed -n "2,23p" "$0" | sed "s/^# \{0,1\}//"; exit 2 ;;
esac
