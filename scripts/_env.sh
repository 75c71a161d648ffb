# Sourced by the other scripts: make sure .venv exists and holds this project and its tools.
# torch is pinned and installed first: an unpinned install resolves to a multi-GB CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PREMEM_VENV:-$ROOT/.venv}"
TORCH_SPEC="${PREMEM_TORCH_SPEC:-torch==2.13.0}"
PY="${PYTHON:-python3}"

stamp="$VENV/.premem-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/_env.sh" | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[premem] preparing $VENV (first run or dependencies changed; a few minutes)..." >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" >&2 || true
  "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC" 2>&1 | grep -v "is ignored" >&2 || true
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev]" 2>&1 | grep -v "is ignored" >&2 || true
  "$VENV/bin/python" -c "import torch, lightning, torchmetrics, transformers, datasets, tensorboard, lightning_premem" \
    || { echo "[premem] installing into $VENV failed; see the pip output above" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
