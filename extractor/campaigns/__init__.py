"""Campaigns and sweeps: audits described by TOML files, run as small resumable steps.

:mod:`~extractor.campaigns.config` - the campaign TOML schema, its checks, the frozen
copy and the campaign's identity (its run id); :mod:`~extractor.campaigns.pipeline` -
the steps (sample -> match -> report -> history) and the one runner that owns
``campaign.json``, resume/skip and the release gates; :mod:`~extractor.campaigns.sweep` -
many campaigns from one file under a cron-safe lock; :mod:`~extractor.campaigns.ledger` -
the ledger Parquet file of finished campaigns (the regression rule and the trend
report over its rows are :mod:`reports.trend`'s); :mod:`~extractor.campaigns.demo` -
``trawl demo``, the whole pipeline on the embedded model with the pipeline's steps.
"""
