#!/usr/bin/env bash
# Makes target/pyenv: a venv with maturin, numpy and the `fdlink` Python module built from
# python/ (what tools/tests/python_consumer.rs runs). Idempotent: with nothing changed since
# the last run it only checks, in well under a second. Debian 12's own pip refuses to install
# (PEP 668), hence the venv. PYTHON picks the interpreter (default: python3, 3.11 or newer).
# `--check`: change nothing; exit 1, saying what is missing, unless the venv is ready and its
# module is built from the sources as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=target/pyenv
py=$venv/bin/python
python=${PYTHON:-python3}
check=0
[ "${1:-}" = --check ] && check=1

missing() {
  if [ "$check" = 1 ]; then
    echo "python-setup: $1: run scripts/python-setup.sh" >&2
    exit 1
  fi
}

# -I everywhere: the checkout's fdlink/ folder must not pass for the module.
if ! "$py" -I -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  missing "no Python 3.11+ venv at $venv"
  if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "python-setup: installing python3-venv"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  echo "python-setup: creating $venv with $("$python" --version)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi

if ! "$py" -I -c 'import maturin, numpy' 2>/dev/null; then
  missing "maturin or numpy missing from $venv"
  echo "python-setup: installing maturin and numpy into $venv"
  "$py" -m pip install -q --disable-pip-version-check 'maturin>=1.9,<2' 'numpy>=1.26'
fi

# The module is rebuilt when a source it is built from changed (python/, the core crate, or
# the workspace manifest the core crate takes its dependencies from).
stamp=$(
  {
    echo Cargo.toml
    find python fdlink \( -name target -o -name __pycache__ \) -prune -o -type f \
      \( -name '*.rs' -o -name '*.toml' -o -name '*.lock' -o -name '*.pyi' \) -print
  } | LC_ALL=C sort | tr '\n' '\0' | xargs -0 sha1sum | sha1sum | cut -d' ' -f1
)
if [ "$(cat "$venv/.fdlink-module" 2>/dev/null)" != "$stamp" ] ||
  ! "$py" -I -c 'import fdlink; fdlink.Consumer' 2>/dev/null; then
  missing "the fdlink module in $venv is missing or older than its sources"
  echo "python-setup: building the fdlink module (python/) into $venv"
  # Its own target dir under target/: the crate is a workspace of its own. maturin runs from
  # the venv (no build isolation: no second download of it), with python/Cargo.lock as is.
  if ! PATH=$root/$venv/bin:$PATH CARGO_TARGET_DIR=$root/target/python MATURIN_PEP517_ARGS=--locked \
    "$py" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
    --force-reinstall ./python; then
    echo "python-setup: building python/ failed; if cargo said python/Cargo.lock needs" \
      "updating (the core crate's dependencies changed): (cd python && cargo update -w)," \
      "and commit python/Cargo.lock" >&2
    exit 1
  fi
  echo "$stamp" >"$venv/.fdlink-module"
fi
