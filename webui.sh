#!/usr/bin/env bash
# sdweb launcher (Linux/macOS): first run creates venv/ and installs everything; later runs start at once.
# Settings go in webui-user.sh (COMMANDLINE_ARGS, TORCH_COMMAND, PYTHON, VENV_DIR). Extra arguments are
# passed to webui.py:  ./webui.sh --listen --gradio-auth me:secret
set -euo pipefail
cd "$(dirname "$0")"
[ -f ./webui-user.sh ] && . ./webui-user.sh

PYTHON=${PYTHON:-python3}
VENV_DIR=${VENV_DIR:-venv}
if [ -z "${TORCH_COMMAND:-}" ]; then
    # PyPI's torch for Linux is the CUDA build (it also runs on CPU); macOS gets the MPS/CPU build.
    TORCH_COMMAND="pip install torch==2.13.0"
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: $PYTHON not found; install Python 3.10 or newer" >&2
    exit 1
fi
if [ ! -x "$VENV_DIR/bin/python" ]; then
    echo "Creating the virtual environment in $VENV_DIR ..."
    "$PYTHON" -m venv "$VENV_DIR"
fi
# shellcheck disable=SC1091
. "$VENV_DIR/bin/activate"

# Install only when what we would install changed: a stamp of the torch command and pyproject.toml.
stamp="$VENV_DIR/.sdweb-installed"
want="$(printf '%s\n' "$TORCH_COMMAND"; cat pyproject.toml)"
want_sum=$(printf '%s' "$want" | cksum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_sum" ]; then
    echo "Installing torch: $TORCH_COMMAND"
    python -m pip install -q --upgrade pip
    $TORCH_COMMAND
    echo "Installing sdweb and its dependencies ..."
    python -m pip install -q -e .
    echo "$want_sum" > "$stamp"
fi

# shellcheck disable=SC2086
exec python webui.py ${COMMANDLINE_ARGS:-} "$@"
