#!/usr/bin/env bash
# Install what the tests need (into ./.venv) and run lint, layer contracts and the test suite.
# Usage: bash scripts/test.sh [extra pytest args]
# Works from a clean clone: pins torch==2.13.0 (the CPU build) before installing sdweb[test].
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# 1. A virtual environment with torch first (an unpinned torch would pull a multi-GB CUDA build).
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip 2>&1 | grep -v WARNING || true
python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | grep -v WARNING || true
python -m pip install -q -e ".[test]" 2>&1 | grep -v WARNING || true
# The A1111-parity oracle (tests/engine/kdiffusion_oracle.py): k-diffusion, the package A1111 runs.
# Its declared dependencies pull torchvision and its training stack; the oracle loads only its
# sampling module, which needs scipy, torchsde, tqdm (sdweb's own) and torchdiffeq: so --no-deps.
python -m pip install -q --no-deps "k-diffusion==0.1.1.post1" "torchdiffeq==0.2.5" 2>&1 | grep -v WARNING || true
python -c "import torch, diffusers, gradio, sdweb" >/dev/null

# 2. Browser for the UI tests: Debian's chromium (never 'playwright install').
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
            || echo "warning: could not install chromium; browser tests will fail" >&2
    else
        echo "warning: chromium not found; install it (apt-get install chromium) for the browser tests" >&2
    fi
fi

# 3. Deliberate threading: one torch thread per test process, passive OpenMP waits (see README).
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 GRADIO_ANALYTICS_ENABLED=False

# 4. Lint and layer contracts.
echo "== ruff"
ruff check sdweb tests benchmarks scripts demo_model webui.py
echo "== import-linter"
lint-imports

# 5. Tests (slow ones included; GPU ones only where CUDA exists). Exit code 5 (no tests) is a failure.
echo "== pytest"
markers="not gpu"
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then markers=""; fi
# Two processes (one per core of a 2-core CI machine; PYTEST_WORKERS overrides): a test file stays in one
# process (--dist loadfile), so a file's servers, Ray cluster and fixtures are never shared across them.
workers=${PYTEST_WORKERS:-$(python -c "import os; print(min(2, os.cpu_count() or 1))")}
parallel=()
if [ "$workers" -gt 1 ]; then parallel=(-n "$workers" --dist loadfile); fi
set +e
python -m pytest -m "$markers" -p no:cacheprovider "${parallel[@]}" "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
