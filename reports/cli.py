"""``trawl report RUN``: write the HTML / Markdown / JSON report of a run, optionally
failing (exit code 3) when a release gate is crossed."""
from __future__ import annotations

import argparse
import sys

from corpora.hygiene import visible
from reports.errors import ReportError
from reports.gate import FAIL_EXIT_CODE, Gate


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="write the memorization report of a run (HTML, Markdown, JSON)",
        description=(
            "Compute the memorization metrics of RUN (generations + matches Parquet files) and write "
            "RUN/report/report.html (self-contained, offline), report.md, metrics.json (versioned) and "
            "memorized_spans.jsonl (every memorized text and the documents holding it). "
            f"With --fail-if, exit {FAIL_EXIT_CODE} when the expression is true (a release gate for CI)."),
        epilog=("--fail-if grammar: comparisons (< <= > >= == !=) between metric names and numbers, "
                "combined with and / or / not and parentheses, e.g. "
                "'memorized_token_fraction > 0.001 or unique_memorized_windows >= 100'. "
                "Names: the keys of metrics.json's \"metrics\" object, or dotted paths such as "
                "per_attack.divergence.memorized_generation_fraction."))
    p.add_argument("run", metavar="RUN", help="run folder (generations/, matches.parquet, run.json)")
    p.add_argument("-o", "--out", metavar="DIR", help="output folder (default RUN/report)")
    p.add_argument("--redact", action="store_true",
                   help="mask personal data and secrets (emails, phone numbers, IPs, keys) in every output")
    p.add_argument("--window-tokens", type=int, default=50, metavar="N",
                   help="tokens in a memorized window (default 50, as in Nasr et al. 2023)")
    p.add_argument("--recitation-min-occurrences", type=int, default=6, metavar="N",
                   help="corpus occurrences from which a memorized span counts as recitation (default 6: Prashanth "
                        "et al. 2024's 'more than 5 duplicates'); reconstruction and low-information spans are "
                        "left out of the non-trivial figures whatever their count")
    p.add_argument("--index", metavar="INDEX",
                   help="suffix index folder (or URL), to list every document holding a span (default: the index recorded "
                        "in matches.parquet, when it is still there and unchanged)")
    p.add_argument("--fail-if", metavar="EXPR", action="append", default=[],
                   help=f"exit {FAIL_EXIT_CODE} when EXPR holds (repeatable: any true expression fails)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors and gate results")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from reports.render import write_report
    from reports.metrics import compute_metrics

    gates = [Gate(e) for e in args.fail_if]          # parse before the (long) computation
    metrics = compute_metrics(args.run, window_tokens=args.window_tokens, index=args.index,
                              progress=not args.quiet and sys.stderr.isatty(),
                              recitation_min_occurrences=getattr(args, "recitation_min_occurrences", 6))
    for g in gates:
        g.check_names(metrics)                        # unknown names: one-line error before writing
    paths = write_report(args.run, out_dir=args.out, redact=args.redact, metrics=metrics)
    t = metrics["metrics"]
    if not args.quiet:
        frac = t["memorized_token_fraction"]
        print(f"trawl report: {t['memorized_generations']:,} of {t['generations']:,} generations memorized; "
              f"memorized tokens {frac * 100 if frac is not None else 0:.4g}%; "
              f"{t['unique_memorized_windows']:,} unique {metrics['parameters']['window_tokens']}-token windows; "
              f"non-trivial (recitation + recollection): {t['nontrivial_memorized_generations']:,} generations, "
              f"{t['nontrivial_unique_memorized_windows']:,} windows")
        print(f"  html: {paths.html}\n  md:   {paths.md}\n  json: {paths.json}")
    failed = False
    for g in gates:
        if g.evaluate(metrics):
            print(f"trawl report: release gate crossed: {g.explain(metrics)}", file=sys.stderr)
            failed = True
        elif not args.quiet:
            print(f"trawl report: gate passed: {g.explain(metrics)}")
    return FAIL_EXIT_CODE if failed else 0


class _NoAbbrevParser(argparse.ArgumentParser):
    """No prefix abbreviations and a usage error in one line, as ``trawl``'s own parser
    (``extractor.cli.TrawlParser``; reports never imports extractor, hence this twin)."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message):
        sys.stderr.write(f"trawl: error: {visible(message)} (see {self.prog} --help)\n")
        sys.exit(2)


def main(argv=None) -> int:  # for `python -m reports.cli` without the extractor's CLI
    parser = _NoAbbrevParser(prog="trawl")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_NoAbbrevParser, required=True)
    register(sub)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except ReportError as exc:
        print(f"trawl: error: {visible(exc)}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
