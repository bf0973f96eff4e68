"""``edge-bench report`` and ``edge-bench compare``: click commands the CLI group registers.

They import no TensorFlow: reports and comparisons read results files only.
"""

from __future__ import annotations

import sys

import click


@click.command("report")
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--output", "output_prefix", default=None, metavar="PREFIX",
              help="Write PREFIX.md, PREFIX.csv, PREFIX.html, PREFIX_latency_vs_accuracy.png, "
                   "PREFIX_formats.png and PREFIX_pareto.png [default: RESULTS without .json].")
@click.option("--accuracy-loss", "accuracy_loss", default="1pt", show_default=True, metavar="POINTS",
              help="Top-1 the 'Fastest within' section may give up, in points below the most accurate run "
                   "on each device: 1pt, 0.5pt.")
def report(results, output_prefix, accuracy_loss):
    """Markdown, HTML, CSV and PNG plots (with Pareto fronts) from a results file of `edge-bench bench`."""
    from edge_mobilenet.report.markdown import write_full_report
    from edge_mobilenet.report.pareto import parse_accuracy_loss

    files = write_full_report(results, output_prefix, parse_accuracy_loss(accuracy_loss))
    click.echo(files[0].read_text(encoding="utf-8"))
    click.echo("wrote " + ", ".join(str(f) for f in files))


@click.command("compare")
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@click.option("--fail-on", "fail_on", multiple=True, metavar="SPEC",
              help="Regression threshold, repeatable: p50:10% (p50 more than 10% slower), p90:…, p99:…, "
                   "mean:…, top1:0.5pt (top-1 down by more than 0.5 points).")
def compare(old, new, fail_on):
    """Compare two results files run by run; exit 1 when a --fail-on threshold is crossed."""
    from edge_mobilenet.report.compare import compare as compare_files

    text, regressed = compare_files(old, new, list(fail_on))
    click.echo(text)
    sys.exit(1 if regressed else 0)
