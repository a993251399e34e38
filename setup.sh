#!/usr/bin/env bash
# Set up grid.py on Debian 12 and run something with it.
#
#   bash setup.sh example   install, then run examples/ on the local backend in ./demo
#   bash setup.sh test      install (with a DIRAC server for the integration tier), run pytest
#   bash setup.sh install   install only: system packages, .venv with DIRAC, gevent, plyvel, matplotlib, grid
#
# Idempotent: a second run reuses .venv and only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
DIRAC_VERSION=${DIRAC_VERSION:-9.1.22}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
    # Install the Debian packages that are missing; needs root (or sudo).
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_client() {
    # DIRAC's client builds M2Crypto and friends from source: these are their build dependencies.
    apt_install swig libssl-dev libboost-python-dev libgfal2-dev cmake pkg-config libglib2.0-dev \
        build-essential python3-dev python3-venv
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        # --copies: DIRAC's JobAgent (test lab) runs jobs with realpath(sys.executable)
        "$PYTHON" -m venv --copies "$VENV"
    fi
    [ -x "$VENV/bin/uv" ] || "$VENV/bin/pip" install -q uv
    # gfal2-python from PyPI does not build against Debian's libgfal2; DIRAC's WMS client works without it.
    echo 'gfal2-python; python_version < "0"' > "$VENV/overrides.txt"
    if ! "$VENV/bin/python" -c 'import grid, DIRAC, gevent, plyvel, matplotlib' 2>/dev/null; then
        say "installing grid.py, DIRAC $DIRAC_VERSION, gevent, plyvel, matplotlib (for grid report) into $VENV"
        # --compile-bytecode: `grid report` imports matplotlib; compiled once here, not at every start
        # where Python may not write its caches (PYTHONDONTWRITEBYTECODE)
        VIRTUAL_ENV=$VENV "$VENV/bin/uv" pip install -q --compile-bytecode --override "$VENV/overrides.txt" \
            -e "$ROOT[report]" "DIRAC==$DIRAC_VERSION"
    fi
}

install_test() {
    install_client
    # The integration tier runs a real DIRAC WMS on loopback: MariaDB, DIRAC's server extras, iptables
    # and NetfilterQueue for the optional 50 ms round trip. Chromium draws `grid report`'s page in
    # tests/test_report.py (in a network namespace of its own: unshare, from util-linux).
    apt_install mariadb-server default-libmysqlclient-dev iptables libnetfilter-queue-dev iproute2 procps \
        chromium util-linux
    if ! "$VENV/bin/python" -c 'import pytest, MySQLdb, netfilterqueue' 2>/dev/null; then
        say "installing DIRAC[server] $DIRAC_VERSION, pytest into $VENV"
        VIRTUAL_ENV=$VENV "$VENV/bin/uv" pip install -q --override "$VENV/overrides.txt" \
            -e "$ROOT[test,report]" "DIRAC[server]==$DIRAC_VERSION" "netfilterqueue==1.1.0"
    fi
}

run_example() {
    install_client
    say "running examples/ on the local backend in $ROOT/demo"
    rm -rf "$ROOT/demo" && mkdir -p "$ROOT/demo" && cd "$ROOT/demo"
    # fail.py fails on purpose, so grid exits 6 (not every job is Done): that is the expected end
    "$VENV/bin/grid" submit --backend local "$ROOT"/examples/hello.py "$ROOT"/examples/many.py \
        "$ROOT"/examples/params.py "$ROOT"/examples/fail.py || [ $? -eq 6 ]
    ls "$ROOT/demo"
    # the batch as one page with plots; it says where it wrote it
    "$VENV/bin/grid" report
    say "open $ROOT/demo/report.html in a browser to see the example's batch"
}

run_tests() {
    install_test
    say "running the test suite"
    set +e
    "$VENV/bin/python" -m pytest "$@"
    rc=$?
    set -e
    # pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
    [ $rc -eq 5 ] && echo "setup.sh: pytest collected no tests" >&2
    exit $rc
}

case "${1:-}" in
    install) install_client ;;
    example) run_example ;;
    test) shift; run_tests "$@" ;;
    *) echo "usage: bash setup.sh {example|test [PYTEST-ARGS]|install}" >&2; exit 2 ;;
esac
