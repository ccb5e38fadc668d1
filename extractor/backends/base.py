"""What every backend is, returns and raises: :class:`Backend`, :class:`Capabilities`,
:class:`Choice`, :class:`CompletionResult`, :class:`TextScore`, :class:`BackendError`.

Three classes implement :class:`Backend`: :class:`~extractor.backends.openai.OpenAIBackend`
(one OpenAI-compatible server), :class:`~extractor.backends.pool.PoolBackend` (replicas of
one model behind one backend) and :class:`~extractor.backends.vllm_offline.VLLMOfflineBackend`
(vLLM in trawl's process). Callers (the sampler, attacks) use the protocol only, never
``hasattr`` or the concrete class.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:   # TextScore.full_logprobs' type only: numpy is imported where rows are made
    import numpy


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
    server: str | None = None       # "vllm" (GET /version), "llama_cpp" or None (see backends/probe.py)
    server_version: str | None = None
    sampling_defaults: dict = field(default_factory=dict)  # fields sent with every request (vLLM)
    start_ids: list | None = None  # token ids sent for an empty prompt (vLLM refuses "")
    temperature_decay: bool = False  # exact per-token temperature decay (backend vllm: a logits processor)
    ignore_eos: bool = False        # honours ignore_eos (generate past EOS to max_tokens): vLLM only
    tokenizer_file: str | None = None  # token_info "local_tokenize": the GGUF file whose tokenizer is used
    score: str | None = None        # how Backend.score works here: "echo", "prompt_logprobs", "in_process" or None
    full_distribution: bool = False  # score(vocab_stats=True / full=True) sees the whole vocabulary (exact)
    api: str = "completions"        # the API requests go to: "completions" (/v1/completions) or "chat"
    chat_max_field: str = "max_tokens"  # chat: the name max_tokens is sent under (or max_completion_tokens)
    chat_template: dict | None = None  # chat: {"sha256", "source"} of the server's chat template (backends/chat.py)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def has_token_info(self) -> bool:
        return self.logprobs_tokens or self.tokenize is not None

    @property
    def deferred_tokens(self) -> bool:
        """Whether ``complete(defer_tokens=True)`` may leave token boundaries ``pending`` (they
        need tokenize requests: worth doing after the generation slot is free), to be completed
        by ``fill_tokens`` / ``fill_tokens_many``. A property, not a field: it is derived, and
        ``to_dict`` (``run.json``'s ``capabilities``) keeps its keys."""
        return self.tokenize is not None


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


@dataclass
class TextScore:
    """The model's own log-probabilities of one given text (``Backend.score``).

    Positions are the tokens of the scored text only (a context conditions them but is not
    scored). Log-probabilities are natural logs at temperature 1 (the raw distribution, no
    sampling truncation). A position the backend could not score (e.g. the first token of a
    text with no context on a server that does not score the first prompt token) holds NaN.
    """

    token_ids: list[int] | None        # the scored text's tokens (after the context), when known
    token_offsets: list[int]           # byte offset of each token's start in the text's UTF-8 (as Choice.token_offsets)
    logprobs: list[float]              # log p(token_i | context, tokens_<i), temperature 1, natural log
    top_logprobs: list[dict[str, float]] | None   # top-k alternatives per position (token string -> logprob), when asked
    vocab_mean: list[float] | None     # per position: mu = E_{z~p}[log p(z)] over the vocabulary (min-k%++, Zhang et al. 2024)
    vocab_var: list[float] | None      # per position: sigma^2 = E_{z~p}[(log p(z) - mu)^2]
    exact_vocab_stats: bool            # True: from the full distribution; False: approximated from the top-k
    full_logprobs: "numpy.ndarray | None" = None  # [positions, vocab] float32 log-softmax rows (full=True, where the backend can)  # noqa: F821
    prompt_tokens: int = 0             # tokens sent (context + text, with BOS): what the request is billed for
    note: str | None = None            # how the figures were obtained, when not exactly as asked (e.g. the approximation)


@runtime_checkable
class Backend(Protocol):
    """A served model, as the sampler and the attacks use it.

    Guarantees every implementation gives:

    * :meth:`probe` is called once before anything else but ``describe``; it returns (and
      stores in :attr:`capabilities`) what the model server supports, or raises
      :class:`~extractor.errors.TrawlError` with one clear sentence when it is unusable.
      The sampler sends only what ``capabilities`` says is honoured (``n``, prompt lists,
      ``seed``, ``top_k``, ``ignore_eos``, ``temperature_decay``).
    * :meth:`complete` returns a :class:`CompletionResult` with one :class:`Choice` per prompt
      (a prompt list) times ``n``, in order, or raises :class:`BackendError` (after the
      backend's own retries; ``retryable`` says whether trying later may help). Every choice
      has its token boundaries (``token_offsets``), or ``token_source == "none"`` /
      ``"empty"``, or, only with ``defer_tokens=True`` and only when
      ``capabilities.deferred_tokens``, ``"pending"``. With ``capabilities.api == "chat"`` the
      prompt is one conversation: a string (one user turn) or a list of ``{"role", "content"}``
      messages (see :mod:`extractor.backends.chat`); each choice is an assistant reply.
    * :meth:`score` returns one :class:`TextScore` per text, in order: the log-probability of each
      of the text's tokens given ``contexts[i]`` (unscored) and the tokens before it, at
      temperature 1, with ``top_k`` alternatives per position and, with ``vocab_stats``, the
      per-position mean and variance of log p over the vocabulary (exact only where
      ``capabilities.full_distribution``; otherwise estimated from the top-k, and
      ``exact_vocab_stats`` is False); ``full=True`` adds the whole log-softmax rows where the
      backend can (else None). ``capabilities.score`` says how (None: the backend cannot score,
      and ``score`` raises TrawlError). Failures raise :class:`BackendError` like ``complete``.
    * :meth:`fill_tokens` / :meth:`fill_tokens_many` turn ``pending`` choices into ones with
      boundaries, or ``token_source == "none"`` with ``token_error`` set; they never raise for a
      tokenizer failure (the generation was paid for) and leave other choices alone.
    * :meth:`tokenize` / :meth:`detokenize` / :meth:`piece` / :meth:`token_offsets` use the
      served model's own tokenizer (no BOS), where ``capabilities.tokenize`` or the backend
      offers one; otherwise they raise TrawlError.
    * :attr:`endpoint` names where the calling thread's last request went (the ``endpoint``
      column); :attr:`endpoints` lists every endpoint behind the backend; :meth:`stats` gives
      per-endpoint figures (``{}`` when there is one endpoint); :attr:`retries` counts retried
      attempts and may be reset to 0; :meth:`describe` is a dict safe to write to disk (no
      secret); :meth:`interrupt` ends pending retry waits at once (a run stops), :meth:`close`
      too; :attr:`api_key_env` names the environment variable holding the API key (None: none).
    """

    name: str
    model: str
    endpoint: str
    endpoints: list[str]
    capabilities: Capabilities
    retries: int
    api_key_env: str | None

    def probe(self, use_cache: bool = True) -> Capabilities: ...

    def complete(self, prompt: str | list[str] | list[dict], params: dict, *, n: int = 1, seed: int | None = None,
                 timeout: float | None = None, defer_tokens: bool = False) -> CompletionResult: ...

    def score(self, texts: list[str], *, contexts: list[str] | None = None, top_k: int = 0,
              vocab_stats: bool = False, full: bool = False, timeout: float | None = None) -> list[TextScore]: ...

    def fill_tokens(self, choice: Choice) -> Choice: ...

    def fill_tokens_many(self, choices: list[Choice]) -> None: ...

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, ids: list[int]) -> str: ...

    def piece(self, token_id: int) -> str: ...

    def token_offsets(self, text: str) -> list[int]: ...

    def describe(self) -> dict: ...

    def stats(self) -> dict: ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...
