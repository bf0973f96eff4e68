"""The ``edge-bench`` command line: a thin layer over the library.

Heavy imports (TensorFlow, ONNX) happen inside the commands that need them, so ``--help`` and the
device-facing commands start fast.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

import click

from edge_mobilenet.contracts.formats import FORMATS
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.quiet import drop_retracing_warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
drop_retracing_warnings()


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C: temporary folders are removed, nothing is half-recorded."""

    signum = signal.SIGTERM


_RECEIVED: list[int] = []  # signals received: an error raised after one is that interruption's


def _terminate(signum, frame):
    _RECEIVED.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


class _Group(click.Group):
    """Turns EdgeError (and a missing input file) into one line on stderr and exit status 2; SIGINT
    and SIGTERM unwind the same way (exit 130 / 143)."""

    def invoke(self, ctx):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
            signal.signal(signal.SIGINT, _terminate)
        try:
            return super().invoke(ctx)
        except EdgeError as error:
            click.echo(f"edge-bench: error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as interrupt:
            _interrupted(interrupt)
        except Exception as error:  # a signal inside a C extension surfaces as its error
            cause = _interrupt_in(error)
            if cause is None and not _RECEIVED:
                raise
            _interrupted(cause or (Terminated() if _RECEIVED[-1] == signal.SIGTERM else KeyboardInterrupt()))


def _interrupt_in(error: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt an exception was raised while handling (e.g. ImportError from an
    extension module whose import a signal cut short), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _interrupted(interrupt: KeyboardInterrupt):
    terminated = isinstance(interrupt, Terminated)
    click.echo(f"edge-bench: {'terminated' if terminated else 'interrupted'}", err=True)
    sys.exit(143 if terminated else 130)


@click.group(cls=_Group)
@click.version_option(package_name="edge-mobilenet")
def main():
    """Build, quantize and benchmark MobileNet V1/V2/V3 for ARM CPUs."""


@main.command()
@click.argument("model")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Width multiplier.")
@click.option("--size", type=int, default=None, help="Input resolution (pixels); default 224, detectors 320.")
@click.option("--classes", type=int, default=None,
              help="Default 1000; detectors: object classes without the background, default 90.")
@click.option("--depth-multiplier", type=int, default=1, show_default=True, help="V1 only.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def describe(model, alpha, size, classes, depth_multiplier, as_json):
    """Per-layer output shape, parameters and multiply-accumulates of MODEL.

    Params are counted with BatchNormalization folded into the convolutions (as deployed); MACs are
    the multiply-accumulates of convolutions and dense layers.
    """
    from edge_mobilenet.models.profile import describe_registered
    from edge_mobilenet.report.tables import describe_table

    report = describe_registered(model, alpha=alpha, size=size, classes=classes, depth_multiplier=depth_multiplier)
    click.echo(json.dumps(report) if as_json else describe_table(report))


@main.command()
@click.option("--model", "model_name", default="mobilenet_v1", show_default=True,
              help="Registered model name (see `edge-bench models`).")
@click.option("--alpha", type=float, default=0.25, show_default=True)
@click.option("--size", type=int, default=32, show_default=True)
@click.option("--data", "data_dir", type=click.Path(), default=None,
              help="Image folder with one sub-folder per class; default: scikit-learn's digits. "
                   "Detectors: a COCO folder with train/ and val/; default: the synthetic digits set.")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--learning-rate", type=float, default=2e-3, show_default=True)
@click.option("--validation-split", type=float, default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--weights", type=click.Path(), default=None,
              help="Start from this .keras/.h5 model (fine-tuning) instead of random weights. Detectors: a "
                   "classifier of the same family and alpha for the backbone; default: the digits classifier "
                   "in --output (trained first if missing); 'none': from scratch.")
@click.option("--freeze-base", is_flag=True, help="Fine-tune only the classifier head.")
@click.option("--bn-momentum", type=float, default=None,
              help="BatchNormalization momentum; default 0.9 from scratch, the model's own when fine-tuning.")
@click.option("--output", type=click.Path(), default="build/models", show_default=True,
              help="Folder for MODEL.keras and MODEL.metrics.json.")
@click.option("--images", "synthetic_count", type=int, default=None,
              help="Detectors without --data: images in the synthetic set (train + val) [2000].")
@click.option("--skip-bad", is_flag=True,
              help="Detectors: skip (and count in the metrics file) bad COCO entries instead of failing.")
@click.option("--stride8-map/--paper-maps", default=True, show_default=True,
              help="Detectors: add a feature map at output stride 8 (small objects at small inputs) "
                   "or keep the papers' taps only.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(model_name, alpha, size, data_dir, epochs, batch_size, learning_rate, validation_split,
          seed, weights, freeze_base, bn_momentum, output, synthetic_count, skip_bad, stride8_map, quiet):
    """Train or fine-tune a registered model on an image dataset.

    A detector (ssdlite_*, see `edge-bench models`) trains on a COCO folder with train/ and val/ and
    reports COCO mAP on val; options left at their defaults take the detector's own defaults.
    """
    from edge_mobilenet.models.registry import DETECTORS

    if model_name in DETECTORS:
        from click.core import ParameterSource

        for option, name in (("--freeze-base", "freeze_base"), ("--validation-split", "validation_split")):
            if click.get_current_context().get_parameter_source(name) != ParameterSource.DEFAULT:
                raise EdgeError(f"{option} applies to classifiers only; a detector trains on the train/ and "
                                f"val/ folders of --data")
        _train_detector(model_name, data_dir=data_dir, weights=weights, output=output, quiet=quiet,
                        stride8_map=stride8_map, skip_bad=skip_bad, alpha=alpha, size=size, epochs=epochs,
                        batch_size=batch_size, learning_rate=learning_rate, seed=seed, bn_momentum=bn_momentum,
                        synthetic_count=synthetic_count)
        return
    if synthetic_count is not None or skip_bad:
        option = "--images" if synthetic_count is not None else "--skip-bad"
        raise EdgeError(f"{option} applies to detectors only; {model_name} trains on --data or the digits")
    from edge_mobilenet.train import TrainSettings, train_model

    settings = TrainSettings(model=model_name, alpha=alpha, size=size, data_dir=data_dir,
                             epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                             validation_split=validation_split, seed=seed, weights=weights,
                             freeze_base=freeze_base, bn_momentum=bn_momentum, output_dir=output,
                             progress=not quiet)
    result = train_model(settings)
    click.echo(json.dumps({k: result[k] for k in ("model_path", "val_accuracy", "seconds")}))


def _train_detector(model_name: str, *, data_dir, weights, output, quiet, stride8_map, skip_bad, **options) -> None:
    """``train`` for a detector: options the user did not give (or gave as None) keep the detector's
    defaults (train_detection.DetectionTrainSettings)."""
    from click.core import ParameterSource

    from edge_mobilenet.train_detection import DetectionTrainSettings, train_detector

    context = click.get_current_context()
    given = {name: value for name, value in options.items()
             if value is not None and context.get_parameter_source(name) != ParameterSource.DEFAULT}
    if weights is not None:  # default: the family's digits classifier ("auto"); "none": from scratch
        given["weights"] = None if weights.lower() == "none" else weights
    settings = DetectionTrainSettings(model=model_name, data_dir=data_dir, output_dir=output,
                                      progress=not quiet, stride8_map=stride8_map, skip_bad=skip_bad, **given)
    result = train_detector(settings)
    click.echo(json.dumps({"model_path": result["model_path"], **result["metrics"], "seconds": result["seconds"]}))


@main.command()
@click.option("--model", "models_", multiple=True,
              help="A .keras/.h5 file or a registered model name (repeatable).")
@click.option("--recipe", type=click.Path(), default=None,
              help="A TOML recipe (converters/default.toml): models, formats, calibration.")
@click.option("--calibration", type=click.Path(), default=None,
              help="Calibration image folder (default: calibration_data/digits).")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Calibration images to use [200].")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed choosing the calibration images [0].")
@click.option("--skip-corrupt", is_flag=True, help="Skip (and count) undecodable calibration images.")
@click.option("--formats", default=None, help=f"Comma-separated formats [all]: {', '.join(FORMATS)}.")
@click.option("--io", type=click.Choice(["int8", "uint8", "float"]), default=None,
              help="Input/output type of the int8 TFLite model [int8].")
@click.option("--eval", "eval_dir", type=click.Path(), default=None,
              help="Labelled images for validation (default: the training run's validation split).")
@click.option("--eval-count", type=click.IntRange(min=1), default=None, help="Evaluation images [500].")
@click.option("--onnx-activation", type=click.Choice(["uint8", "int8"]), default=None,
              help="ONNX int8 activation type [uint8: U8S8, fastest on x86].")
@click.option("--onnx-method", type=click.Choice(["minmax", "entropy", "percentile"]), default=None,
              help="ONNX Runtime calibration method [minmax].")
@click.option("--target-accuracy", default=None,
              help="Accuracy-aware int8: keep the fewest sensitive layers in float until top-1 reaches "
                   "this share of float top-1 (99%) or this many points below it (0.5pt).")
@click.option("--latency-profile", type=click.Path(), default=None,
              help="With --target-accuracy: profile.json of `edge-bench profile` (the plain int8 artifact and "
                   "its float baseline on the device): keep in float the layers with the most error per "
                   "millisecond their float form costs there.")
@click.option("--ptq", default=None, metavar="auto|none|METHOD[,METHOD]",
              help="Post-training int8 methods beyond min/max: auto (try bias correction, AdaRound and "
                   "range estimators on held-out calibration images, keep what lowers the error), none, or "
                   "bias-correction, adaround, ranges-percentile, ranges-mse [auto].")
@click.option("--rewrite-hard-swish/--no-rewrite-hard-swish", default=True, show_default=True,
              help="Rewrite hard-swish/hard-sigmoid into ops XNNPACK's int8 kernels take (outputs "
                   "checked unchanged); without it int8 MobileNetV3 splits into ~20 partitions.")
@click.option("--detection-outputs", type=click.Choice(["postprocessed", "raw"]), default=None,
              help="Detectors: the four outputs of the post-processing in the graph (boxes, classes, scores, "
                   "count), or raw box encodings + class scores (NAME_raw.* files; decode and NMS your own) "
                   "[postprocessed].")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="For registry names.")
@click.option("--size", type=int, default=224, show_default=True, help="For registry names.")
@click.option("--classes", type=int, default=1000, show_default=True, help="For registry names.")
@click.option("--output", type=click.Path(), default=None, help="Artifacts folder [build/artifacts].")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def quantize(models_, recipe, calibration, count, seed, skip_corrupt, formats, io, eval_dir, eval_count,
             onnx_activation, onnx_method, target_accuracy, latency_profile, ptq, rewrite_hard_swish,
             detection_outputs, alpha, size, classes, output, quiet):
    """Convert float models to TFLite and ONNX artifacts with a manifest.

    Either --model (repeatable) or --recipe. Unchanged inputs reuse existing artifacts.
    """
    from edge_mobilenet.convert.batch import run_quantize

    overrides = dict(calibration=calibration, count=count, seed=seed, skip_corrupt=skip_corrupt or None,
                     formats=formats, io=io, eval_dir=eval_dir, eval_count=eval_count,
                     onnx_activation_type=onnx_activation, onnx_calibration_method=onnx_method,
                     target_accuracy=target_accuracy, latency_profile=latency_profile, ptq=ptq,
                     rewrite_hard_swish=rewrite_hard_swish, detection_outputs=detection_outputs,
                     output_dir=output, progress=False if quiet else None)
    run_quantize(models_, recipe, overrides, (alpha, size, classes))


@main.command("quant-report")
@click.argument("artifact", type=click.Path())
@click.option("--float", "float_path", required=True, type=click.Path(),
              help="The float .keras/.h5 model the artifact was converted from.")
@click.option("--calibration", type=click.Path(), default=None,
              help="Calibration folder [the one recorded in the artifact's manifest].")
@click.option("--count", type=int, default=None, help="Calibration images [as recorded, or 200].")
@click.option("--seed", type=int, default=None)
@click.option("--debug-count", type=int, default=32, show_default=True,
              help="Images the per-layer error is measured on.")
@click.option("--output", type=click.Path(), default="build/quant-report", show_default=True)
@click.option("--latency", type=click.Path(), default=None,
              help="profile.json of `edge-bench profile` (the artifact and its float baseline): join each "
                   "block's int8 error with its int8 and float ms on that device.")
@click.option("--ptq-layers", type=click.Choice(["recorded", "all", "none"]), default="recorded", show_default=True,
              help="Per layer, what the post-training methods did (SNR vs plain on held-out calibration "
                   "images): the ones the manifest records for the artifact, every one, or skip.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
def quant_report(artifact, float_path, calibration, count, seed, debug_count, output, latency, ptq_layers, as_json):
    """Per-layer error of an int8 ARTIFACT against its float model, worst first (table, JSON, PNG)."""
    from edge_mobilenet.convert.quant.report import latency_table, ptq_summary, run_quant_report, table

    report = run_quant_report(artifact, float_path, calibration=calibration, count=count, seed=seed,
                              debug_count=debug_count, output=output, latency=latency, ptq_layers=ptq_layers)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(table(report["layers"]))
    if "ptq_layers" in report:
        click.echo("\n" + ptq_summary(report["ptq_layers"]))
    if "latency" in report:
        join = report["latency"]
        click.echo(f"\nper block, on the profiled device (int8 {join['int8_total_ms']:.3f} ms"
                   + (f", float {join['float_total_ms']:.3f} ms" if join["float_total_ms"] else ", float not profiled")
                   + "):\n" + latency_table(join))
    click.echo(f"\nwrote {report['files'][0]} and {report['files'][1]}")


@main.command("calibration-set")
@click.argument("folder", type=click.Path())
@click.option("--count", type=int, default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def calibration_set(folder, count, seed):
    """Write the default calibration set (scikit-learn digits, training split) into FOLDER."""
    from edge_mobilenet.data.calibration import write_digits_set

    manifest = write_digits_set(folder, count, seed)
    click.echo(json.dumps(manifest, indent=2))


@main.command()
def models():
    """List registered model names."""
    from edge_mobilenet.models.registry import DETECTORS, REGISTRY

    for entry in REGISTRY.values():
        click.echo(f"{entry.name:34s} {entry.summary} (input: {entry.preprocessing})")
    click.echo("\ndetection (outputs box_encodings, class_predictions; `edge-bench describe NAME`):")
    for entry in DETECTORS.values():
        click.echo(f"{entry.name:34s} {entry.summary} (input: {entry.preprocessing}, {entry.size} px, "
                   f"{entry.classes} classes + background)")


def _register_commands() -> None:
    """Commands defined beside their library code (each imports its heavy parts lazily)."""
    from edge_mobilenet.bench.commands import bench, make_profile_command
    from edge_mobilenet.bench.device_commands import device
    from edge_mobilenet.convert.check_command import check
    from edge_mobilenet.data.detection_commands import detection_set
    from edge_mobilenet.report.commands import compare, report
    from edge_mobilenet.sweep.commands import make_sweep_command

    for command in (check, bench, make_profile_command(_prefix_builder), device, report, compare, detection_set,
                    make_sweep_command(_stages)):
        main.add_command(command)


def _prefix_builder():
    from edge_mobilenet.convert.prefixes import build_prefixes

    return build_prefixes


def _stages():
    from edge_mobilenet.pipeline_stages import STAGES

    return STAGES


_register_commands()

if __name__ == "__main__":
    main()
