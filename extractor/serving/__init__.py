"""Model servers trawl starts itself.

:mod:`extractor.serving.embedded` - the embedded Gemma-3-270m GGUF and the local
llama.cpp server that serves it (``trawl demo``, ``embedded = true`` campaigns, the
test suite); :mod:`extractor.serving.serve` - ``trawl serve``: vLLM for an HF model,
llama.cpp for a GGUF file, and the GGUF -> HF conversion vLLM's CPU build needs.
"""
