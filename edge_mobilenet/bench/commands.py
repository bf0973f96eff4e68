"""``edge-bench bench``: latency and accuracy of artifacts on a device."""

from __future__ import annotations

import sys

import click


_CONNECTION = [
    click.option("--device", default="local", show_default=True,
                 help="local, pi, android, or NAME for benchmarks/devices/NAME.toml (or a .toml path)."),
    click.option("--host", default=None, help="SSH host (overrides the profile)."),
    click.option("--user", default=None),
    click.option("--port", type=int, default=None),
    click.option("--identity", default=None, help="SSH private key file."),
    click.option("--ssh-config", default=None, help="ssh config file (default: ~/.ssh/config)."),
    click.option("--serial", default=None, help="adb device serial."),
    click.option("--adb", default=None, help="adb binary."),
    click.option("--python", "python_", default=None, help="Python on the device (default python3)."),
    click.option("--runtime", type=click.Choice(["auto", "litert", "tflite-runtime", "onnxruntime"]), default=None),
    click.option("--threads", type=int, default=None),
    click.option("--cpus", default=None, help="Pin to these CPUs on the device, e.g. 4-7."),
]


def connection_options(command):
    """The device and connection options bench and profile share."""
    for option in reversed(_CONNECTION):
        command = option(command)
    return command


def _profile(host, user, port, identity, ssh_config, serial, adb, python_, runtime, threads, cpus,
             benchmark_binary=None) -> dict:
    return dict(host=host, user=user, port=port, identity=identity, ssh_config=ssh_config, serial=serial,
                adb=adb, python=python_, runtime=runtime, threads=threads, cpus=cpus,
                benchmark_binary=benchmark_binary)


@click.command("bench")
@click.argument("artifacts", nargs=-1)
@connection_options
@click.option("--benchmark-binary", default=None, help="TFLite benchmark_model for devices without Python.")
@click.option("--eval", "eval_dir", default=None,
              help="Labelled images (class sub-folders or labels.csv); default: the training split in the manifest.")
@click.option("--eval-count", type=int, default=None, help="Images for accuracy [200; 50 with --quick].")
@click.option("--quick", is_flag=True, help="Short run: 10 timed runs / 0.2 s, 50 images.")
@click.option("--min-runs", type=int, default=None, help="[50]")
@click.option("--min-seconds", type=float, default=None, help="[1.0]")
@click.option("--max-seconds", type=float, default=None, help="[150]")
@click.option("--warmup-runs", type=int, default=None, help="[1]")
@click.option("--warmup-seconds", type=float, default=None, help="[0.5]")
@click.option("--timeout", "timeout_s", type=float, default=None, help="Seconds per artifact on the device [600].")
@click.option("--output", default=None, help="Results JSON, appended per artifact [build/results/DEVICE.json].")
@click.option("--rounds", type=int, default=None,
              help="Interleave: time the artifacts of each source model in N alternating rounds in one "
                   "process on the device; reports per-round ratios to the float baseline [off].")
@click.option("--round-runs", type=int, default=None, help="Timed invokes per artifact per round [20].")
@click.option("--preprocessing", default=None, type=click.Choice(["symmetric", "raw", "unit"]),
              help="Input scaling of bare .tflite/.onnx files without a manifest [symmetric: (x-127.5)/127.5].")
@click.option("--mean", type=float, default=None, help="Bare artifacts: (pixel - mean) / std.")
@click.option("--std", type=float, default=None, help="Bare artifacts: (pixel - mean) / std.")
@click.option("--profile", "profile_runs", type=int, default=None,
              help="Also time every layer over N invokes on the device (ONNX Runtime; see `edge-bench profile`).")
def bench(artifacts, device, host, user, port, identity, ssh_config, serial, adb, python_, runtime, threads,
          cpus, benchmark_binary, eval_dir, eval_count, quick, min_runs, min_seconds, max_seconds,
          warmup_runs, warmup_seconds, timeout_s, output, rounds, round_runs, preprocessing, mean, std,
          profile_runs):
    """Run ARTIFACTS (folders with a manifest, manifests, .tflite/.onnx files) on a device.

    Default ARTIFACTS: build/artifacts. Exit status 1 if any artifact failed.
    """
    from edge_mobilenet.bench.harness import run_bench_command

    profile = _profile(host, user, port, identity, ssh_config, serial, adb, python_, runtime, threads, cpus,
                       benchmark_binary)
    overrides = dict(min_runs=min_runs, min_seconds=min_seconds, max_seconds=max_seconds, eval_dir=eval_dir,
                     warmup_runs=warmup_runs, warmup_seconds=warmup_seconds, timeout_s=timeout_s,
                     eval_count=eval_count, rounds=rounds, round_runs=round_runs, profile_runs=profile_runs)
    records = run_bench_command(list(artifacts) or ["build/artifacts"], device, profile, overrides, quick=quick,
                                output=output, preprocessing=(preprocessing, mean, std), echo=click.echo)
    sys.exit(1 if any(not r.ok for r in records) else 0)


def make_profile_command(prefix_builder=None):
    """``edge-bench profile``; ``prefix_builder()`` returns ``build(artifact, entry, folder, log)`` (the convert stage's
    truncated prefixes, handed in by the CLI) profiles TFLite artifacts."""

    @click.command("profile")
    @click.argument("artifacts", nargs=-1, required=True)
    @connection_options
    @click.option("--runs", type=click.IntRange(min=1), default=100, show_default=True,
                  help="Profiled invokes (after the warm-up).")
    @click.option("--by", type=click.Choice(["layer", "block"]), default="layer", show_default=True,
                  help="Rows: Keras layers, or the blocks they form (inverted residuals, dw+pw pairs).")
    @click.option("--top", type=click.IntRange(min=1), default=None, help="Print only the N slowest rows.")
    @click.option("--quick", is_flag=True, help="Short whole-model timing (the profile still takes --runs).")
    @click.option("--eval-count", type=int, default=None, help="Images for accuracy [200; 50 with --quick].")
    @click.option("--output", default=None,
                  help="Folder for profile.json, profile.md and results.json [build/profiles/DEVICE].")
    def profile(artifacts, device, host, user, port, identity, ssh_config, serial, adb, python_, runtime, threads,
                cpus, runs, by, top, quick, eval_count, output):
        """Per-layer latency of ARTIFACTS measured on a device, ms and share of the whole model.

        ONNX artifacts: ONNX Runtime's session profiling, run by the device runner in a session of its
        own, mapped back to the Keras layers; the table adds up to the profiled run's p50, and the profiled
        p50 is compared with the unprofiled one of the same process. TFLite artifacts (LiteRT has no per-op
        timing): the model cut after each block, each prefix converted as the artifact was and timed in
        interleaved rounds with it, differenced; the spread over the rounds is the method's noise.
        """
        from edge_mobilenet.bench.profile_report import run_profile_command

        connection = _profile(host, user, port, identity, ssh_config, serial, adb, python_, runtime, threads, cpus)
        overrides = {"profile_runs": runs, "eval_count": eval_count}
        failed = run_profile_command(list(artifacts), device, connection, overrides, by=by, top=top,
                                     quick=quick, output=output, echo=click.echo,
                                     prefix_builder=prefix_builder and prefix_builder())
        sys.exit(1 if failed else 0)

    return profile
