"""``edge-bench check ARTIFACT --runtime SPEC``: will this runtime load the file? (registered in cli.py)"""

from __future__ import annotations

import json

import click

DEFAULT_TFLITE_RUNTIMES = ("tflite-runtime==2.14", "ai-edge-litert")
DEFAULT_ONNX_RUNTIMES = ("onnxruntime",)


@click.command("check")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--runtime", "runtimes", multiple=True, metavar="NAME[==VERSION]",
              help="tflite-runtime==2.14, ai-edge-litert==2.3, ai-edge-litert (newest known), "
                   "onnxruntime==1.16 (repeatable) [tflite-runtime==2.14 and ai-edge-litert; "
                   "onnxruntime for .onnx].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of verdict lines.")
def check(artifact, runtimes, as_json):
    """Say whether each runtime can load ARTIFACT (.tflite or .onnx), from its operator versions.

    Exit status 1 when any runtime would refuse it.
    """
    from edge_mobilenet.runtimes.compat import check_compat, required_ops

    is_onnx = artifact.lower().endswith(".onnx")
    chosen = runtimes or (DEFAULT_ONNX_RUNTIMES if is_onnx else DEFAULT_TFLITE_RUNTIMES)
    results = [check_compat(artifact, spec) for spec in chosen]
    if as_json:
        report = {"artifact": artifact, "loads_everywhere": all(r.ok for r in results),
                  "results": [r.to_dict() for r in results]}
        if not is_onnx:
            report["ops"] = required_ops(artifact)
        click.echo(json.dumps(report, indent=2))
    else:
        for result in results:
            click.echo(result.verdict())
    if not all(r.ok for r in results):
        raise click.exceptions.Exit(1)
