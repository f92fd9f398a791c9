#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing (Node.js,
# Python's venv, Debian's chromium, postgresql, haproxy and faketime, the npm
# packages, the wasm target),
# then runs them all. (componentize-js and componentize-py are installed by
# `dormouse build` itself, into ~/.cache/dormouse, the first time.)
# Arguments go to `cargo test` (e.g. `scripts/test.sh yjs`).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "scripts/test.sh: needs root (or sudo) to run: $*" >&2
    exit 1
  fi
}

missing=()
command -v node >/dev/null || missing+=(nodejs npm)
command -v chromium >/dev/null || missing+=(chromium)
# Python rooms are built with componentize-py, in a virtualenv.
python3 -c "import venv, ensurepip" 2>/dev/null || missing+=(python3 python3-venv)
# The cluster suite starts its own PostgreSQL and HAProxy (cli/tests/cluster).
command -v haproxy >/dev/null || missing+=(haproxy)
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# ... and runs one node with a skewed clock, under libfaketime.
ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || missing+=(faketime)
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "scripts/test.sh: install ${missing[*]} (no apt-get here to do it)" >&2
    exit 1
  fi
  echo "scripts/test.sh: installing ${missing[*]} with apt-get"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

rustup target add wasm32-wasip2
# Real clients for the tests (partysocket, ws, yjs, y-partykit, y-websocket,
# playwright-core), and the Yjs example's page (yjs, y-partykit, esbuild).
(cd tests/node && npm ci --no-audit --no-fund)
(cd examples/yjs/page && npm ci --no-audit --no-fund)

cargo test --workspace "$@"
