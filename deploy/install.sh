#!/usr/bin/env sh
# Installs sluice into PREFIX (a virtualenv) from the source tree SRC: the one set of install
# steps the Dockerfile runs, and that tests/scaleout/test_deploy.py runs into a fresh
# directory and then serves a request from, as an unprivileged user.
#   deploy/install.sh PREFIX [SRC]     (PYTHON picks the interpreter, default python3)
set -eu
PREFIX=${1:?usage: install.sh PREFIX [SRC]}
SRC=${2:-$(cd "$(dirname "$0")/.." && pwd)}
PYTHON=${PYTHON:-python3}

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "sluice needs Python 3.11+"'
"$PYTHON" -m venv "$PREFIX"
"$PREFIX/bin/pip" install --quiet "$SRC"  # the image build sets PIP_NO_CACHE_DIR=1
# a read-only root filesystem: compile now, so nothing is written next to the code at run time
"$PREFIX/bin/python" -m compileall -q "$PREFIX/lib" >/dev/null 2>&1 || true
"$PREFIX/bin/sluice" --help >/dev/null
echo "sluice installed in $PREFIX"
