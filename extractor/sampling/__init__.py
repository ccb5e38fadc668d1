"""The sampler: turns attack plans into stored generations as fast as the server allows.

Python entry point (used by ``trawl sample`` and ``trawl demo``)::

    from extractor.sampling import run_attacks
    from extractor.attacks import AttackSpec
    from extractor.sampling.budget import Budget, Pricing

    summary = run_attacks(
        "runs/demo", endpoint="http://127.0.0.1:8080", model="gemma-3-270m",
        attacks=[AttackSpec("divergence", {"words": ["poem", "company"], "repetitions": 50,
                                           "samples": 2, "max_tokens": 256}),
                 AttackSpec("discoverable", {"corpus": "corpus/", "documents": 20,
                                             "prefix_tokens": 32, "suffix_tokens": 50})],
        budget=Budget(max_seconds=180), concurrency=4, resume=True, progress=True)
    summary.status, summary.stop_reason, summary.finished, summary.tokens_per_s

How it works
    1. Settings (:class:`SamplerSettings`) and attack parameters are checked (unknown
       attack/parameter, bad number: TrawlError) before anything is written.
    2. The server is probed (:meth:`Backend.probe`); an unreachable server or
       one with no token information is a TrawlError.
    3. The run folder's config is frozen (or, with ``resume``, compared with the
       frozen one); :meth:`RunDir.recover` returns the request ids already stored.
    4. The attacks' plans are expanded in a fixed order with deterministic request
       ids (``sha1(run_id, attack, variant, prompt, sample)[:16]``) and per-request
       seeds derived from them; ids already stored are skipped.
    5. ``concurrency`` daemon worker threads send requests; the main thread keeps at
       most ``concurrency`` requests in flight, records each finished generation in
       the journal at once, enforces the budget, and rolls parts.
    Samples of one prompt share a request with ``n`` when the server honours ``n``
    (and ``use_n`` is on); otherwise they are separate requests. Consecutive prompts
    with the same parameters (and the same ``n``) share one request as a prompt list
    when the server honours lists (vLLM; ``use_prompt_lists``, up to ``max_prompts``);
    ``concurrency`` counts requests, so a list puts up to ``max_prompts`` x ``n``
    sequences in flight per request. The grouping is a function of the plan, so a
    resumed run sends what an uninterrupted one would. A list's billed prompt tokens
    are one total; rows get shares in proportion to prompt length
    (``extra.prompt_tokens_estimated``).

The run id defaults to a hash of the frozen plan (model + resolved attacks +
seed), so the same campaign on the same model gets the same request ids in any
folder: an uninterrupted run and a killed-and-resumed one can be compared row
for row.

Modules: ``settings`` (:class:`SamplerSettings`), ``plan`` (attacks resolved, run id,
request ids and seeds, jobs grouped into requests), ``requests`` (sending one request),
``rows`` (generation rows, prompt-token shares, usage recount), ``engine`` (the dispatch
loop and its threads), ``summary`` (:class:`RunSummary`, per-attack figures), ``runner``
(:func:`run_attacks`), ``run_folder`` (:class:`RunDir`, :class:`RunLock`), ``budget``
(:class:`Budget`, :class:`Pricing`).
"""
from extractor.sampling.runner import run_attacks
from extractor.sampling.settings import SamplerSettings
from extractor.sampling.summary import RunSummary

__all__ = ["RunSummary", "SamplerSettings", "run_attacks"]
