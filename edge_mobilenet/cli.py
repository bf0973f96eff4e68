"""The ``edge-bench`` command line: a thin layer over the library.

Heavy imports (TensorFlow, ONNX) happen inside the commands that need them, so ``--help`` and the
device-facing commands start fast.
"""

from __future__ import annotations

import json
import os
import sys

import click

from edge_mobilenet.errors import EdgeError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class _Group(click.Group):
    """Turns EdgeError (and a missing input file) into one line on stderr and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeError as error:
            click.echo(f"edge-bench: error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("edge-bench: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="edge-mobilenet")
def main():
    """Build, quantize and benchmark MobileNet V1/V2/V3 for ARM CPUs."""


def _model_names():
    from edge_mobilenet.models.registry import REGISTRY

    return list(REGISTRY)


@main.command()
@click.argument("model")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Width multiplier.")
@click.option("--size", type=int, default=224, show_default=True, help="Input resolution (pixels).")
@click.option("--classes", type=int, default=1000, show_default=True)
@click.option("--depth-multiplier", type=int, default=1, show_default=True, help="V1 only.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def describe(model, alpha, size, classes, depth_multiplier, as_json):
    """Per-layer output shape, parameters and multiply-accumulates of MODEL.

    Params are counted with BatchNormalization folded into the convolutions (as deployed); MACs are
    the multiply-accumulates of convolutions and dense layers.
    """
    from edge_mobilenet.models.registry import build_model
    from edge_mobilenet.models.profile import describe as describe_model

    keras_model = build_model(model, alpha=alpha, size=size, classes=classes,
                              depth_multiplier=depth_multiplier)
    report = describe_model(keras_model, model_name=model, alpha=alpha, size=size)
    if as_json:
        click.echo(json.dumps(report))
        return
    from edge_mobilenet.report.tables import describe_table

    click.echo(describe_table(report))


@main.command()
@click.option("--model", "model_name", default="mobilenet_v1", show_default=True,
              help="Registered model name (see `edge-bench models`).")
@click.option("--alpha", type=float, default=0.25, show_default=True)
@click.option("--size", type=int, default=32, show_default=True)
@click.option("--data", "data_dir", type=click.Path(), default=None,
              help="Image folder with one sub-folder per class; default: scikit-learn's digits.")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--learning-rate", type=float, default=2e-3, show_default=True)
@click.option("--validation-split", type=float, default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--weights", type=click.Path(), default=None,
              help="Start from this .keras/.h5 model (fine-tuning) instead of random weights.")
@click.option("--freeze-base", is_flag=True, help="Fine-tune only the classifier head.")
@click.option("--bn-momentum", type=float, default=None,
              help="BatchNormalization momentum; default 0.9 from scratch, the model's own when fine-tuning.")
@click.option("--output", type=click.Path(), default="build/models", show_default=True,
              help="Folder for MODEL.keras and MODEL.metrics.json.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(model_name, alpha, size, data_dir, epochs, batch_size, learning_rate, validation_split,
          seed, weights, freeze_base, bn_momentum, output, quiet):
    """Train or fine-tune a registered model on an image dataset."""
    from edge_mobilenet.train import TrainSettings, train_model

    settings = TrainSettings(model=model_name, alpha=alpha, size=size, data_dir=data_dir,
                             epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                             validation_split=validation_split, seed=seed, weights=weights,
                             freeze_base=freeze_base, bn_momentum=bn_momentum, output_dir=output,
                             progress=not quiet)
    result = train_model(settings)
    click.echo(json.dumps({k: result[k] for k in ("model_path", "val_accuracy", "seconds")}))


@main.command()
def models():
    """List registered model names."""
    from edge_mobilenet.models.registry import REGISTRY

    for entry in REGISTRY.values():
        click.echo(f"{entry.name:34s} {entry.summary} (input: {entry.preprocessing})")


if __name__ == "__main__":
    main()
