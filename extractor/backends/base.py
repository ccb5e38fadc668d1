"""What every backend returns, and the errors it raises."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


class BackendError(Exception):
    """A request that failed for good (after retries, or not retryable).

    ``status`` is the HTTP status when there was one; ``retryable`` says whether
    the failure was transient (the retry budget ran out) or permanent (a 4xx).
    Messages never contain the API key.
    """

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False, attempts: int = 1):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.attempts = attempts


@dataclass
class Capabilities:
    """What the server was found to support (see ``OpenAIBackend.probe``)."""

    logprobs_tokens: bool = False   # choices[].logprobs.tokens spell the completion
    logprobs_values: bool = False   # ... with numeric token_logprobs
    n: bool = False                 # n>1 returns n choices
    prompt_list: bool = False       # prompt=[...] returns a choice per prompt
    seed: bool = False              # the same seed gives the same sample
    top_k: bool = False             # the top_k extension is accepted
    tokenize: str | None = None     # "vllm" (/tokenize), "llama_cpp" (/extras/tokenize) or None
    tokenize_adds_bos: bool = False
    token_info: str | None = None   # where token boundaries come from: "logprobs", "tokenize", "local_tokenize"
    server: str | None = None       # "vllm" (GET /version), "llama_cpp" or None (see backends/vllm_http.py)
    server_version: str | None = None
    sampling_defaults: dict = field(default_factory=dict)  # fields sent with every request (vLLM)
    start_ids: list | None = None  # token ids sent for an empty prompt (vLLM refuses "")
    temperature_decay: bool = False  # exact per-token temperature decay (backend vllm: a logits processor)
    ignore_eos: bool = False        # honours ignore_eos (generate past EOS to max_tokens): vLLM only
    tokenizer_file: str | None = None  # token_info "local_tokenize": the GGUF file whose tokenizer is used
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def has_token_info(self) -> bool:
        return self.logprobs_tokens or self.tokenize is not None


@dataclass
class Choice:
    """One generated completion with its token boundaries."""

    text: str
    token_offsets: list[int] | None
    token_logprobs: list[float] | None
    completion_tokens: int
    finish_reason: str
    token_source: str  # "logprobs", "tokenize", "local_tokenize", "none", "empty" or "pending" (see fill_tokens)
    token_error: str | None = None


@dataclass
class CompletionResult:
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    attempts: int
    endpoint: str = ""     # the replica that answered
