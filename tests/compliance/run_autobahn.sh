#!/usr/bin/env bash
# Run the Autobahn WebSocket test suite (fuzzingclient) against csp-bus, one command:
#
#     tests/compliance/run_autobahn.sh            # cases 1-7, 9, 10, 12, 13
#     CASES='["1.*", "2.*"]' tests/compliance/run_autobahn.sh   # a subset
#
# What it does:
#   1. builds (once) a Python 2.7 virtualenv with autobahntestsuite, pinned in
#      requirements27.txt (the suite is Python 2 only; virtualenv 20.21.x is the last
#      release that creates 2.7 environments, so it lives in a small helper venv);
#   2. starts `csp-bus serve --adapter websocket` with the echo app (echo_app.py) on a
#      free port of 127.0.0.1, memory:// layer, embedded worker;
#   3. runs `wstest -m fuzzingclient` against it;
#   4. writes docs/autobahn/summary.md and docs/autobahn/index.json (summarize.py) and
#      exits non-zero when a case is neither OK nor NON-STRICT (nor INFORMATIONAL).
#
# Environment: PY27 (a CPython 2.7, default ~/.pyenv/versions/2.7.18/bin/python),
# PYTHON (the Python that has csp-bus installed, default .venv/bin/python of the repo),
# CASES (a JSON list of case patterns), KEEP_REPORT=1 keeps the HTML report in
# tests/compliance/reports/.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
PY27="${PY27:-$HOME/.pyenv/versions/2.7.18/bin/python}"
PYTHON="${PYTHON:-$root/.venv/bin/python}"
CASES="${CASES:-[\"1.*\", \"2.*\", \"3.*\", \"4.*\", \"5.*\", \"6.*\", \"7.*\", \"9.*\", \"10.*\", \"12.*\", \"13.*\"]}"
venv27="$here/.venv27"
helper="$here/.venv-helper"

if [ ! -x "$PY27" ]; then
    echo "run_autobahn.sh: no Python 2.7 at $PY27 (set PY27=/path/to/python2.7)" >&2
    exit 2
fi

# -- 1. the Python 2.7 environment ------------------------------------------------------
if [ ! -x "$venv27/bin/wstest" ]; then
    echo "== building the Python 2.7 environment for autobahntestsuite" >&2
    if [ ! -x "$helper/bin/virtualenv" ]; then
        "$PYTHON" -m venv "$helper"
        "$helper/bin/pip" install --quiet 'virtualenv>=20.21,<20.22'
    fi
    "$helper/bin/virtualenv" --quiet -p "$PY27" "$venv27"
    "$venv27/bin/pip" install --quiet --disable-pip-version-check \
        -r "$here/requirements27.txt" 2>&1 | grep -v -i -E 'deprecat|WARNING: (Url|Location)' >&2 || true
    "$venv27/bin/wstest" --autobahnversion >/dev/null
fi

# -- 2. the server ----------------------------------------------------------------------
port="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
work="$(mktemp -d -t csp-bus-autobahn.XXXXXX)"
server_log="$work/server.log"
# 9.x sends messages of up to 16 MiB: both the adapter and the layer must take them.
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m csp_bus serve \
    --adapter websocket --app echo_app:routes --bind "127.0.0.1:$port" \
    --layer 'memory://?max_message_size=33554432&capacity=1000' \
    --ws-max-message-size 32M --ws-ping-interval off --no-access-log \
    >"$server_log" 2>&1 &
server_pid=$!
cleanup() {
    if kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
    if "$PYTHON" -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "run_autobahn.sh: the server did not start:" >&2
        cat "$server_log" >&2
        exit 1
    fi
    sleep 0.1
done

# -- 3. the suite -----------------------------------------------------------------------
version="$("$PYTHON" -c 'from importlib.metadata import version; print(version("csp-bus"))')"
cat >"$work/fuzzingclient.json" <<EOF
{
    "outdir": "$work/reports",
    "servers": [{"agent": "csp-bus $version", "url": "ws://127.0.0.1:$port"}],
    "cases": $CASES,
    "exclude-cases": [],
    "exclude-agent-cases": {}
}
EOF
echo "== wstest -m fuzzingclient against ws://127.0.0.1:$port (cases $CASES)" >&2
started=$(date +%s)
(cd "$work" && "$venv27/bin/wstest" -m fuzzingclient -s fuzzingclient.json) >"$work/wstest.log" 2>&1 || {
    echo "run_autobahn.sh: wstest failed:" >&2
    tail -n 30 "$work/wstest.log" >&2
    exit 1
}
elapsed=$(( $(date +%s) - started ))

# -- 4. the summary ---------------------------------------------------------------------
if [ -n "${KEEP_REPORT:-}" ]; then
    rm -rf "$here/reports"
    cp -r "$work/reports" "$here/reports"
    echo "== HTML report: $here/reports/index.html" >&2
fi
"$PYTHON" "$here/summarize.py" "$work/reports/index.json" "$root/docs/autobahn" \
    --cases "$CASES" --seconds "$elapsed" \
    --wstest "$("$venv27/bin/wstest" --autobahnversion 2>&1 | tr '\n' ' ')"
