"""``edge-bench device doctor | setup``: what a device can run, and preparing it (registered in cli.py)."""

from __future__ import annotations

import json
import sys

import click

CONNECTION_KEYS = ("host", "user", "port", "identity", "ssh_config", "serial", "adb", "python")


def _connection_options(command):
    """The device flags of ``bench``: a profile and what overrides it."""
    options = [
        click.option("--device", required=True,
                     help="local, pi, android, or NAME for benchmarks/devices/NAME.toml (or a .toml path)."),
        click.option("--host", default=None, help="SSH host (overrides the profile)."),
        click.option("--user", default=None), click.option("--port", type=int, default=None),
        click.option("--identity", default=None, help="SSH private key file."),
        click.option("--ssh-config", default=None, help="ssh config file (default: ~/.ssh/config)."),
        click.option("--serial", default=None, help="adb device serial."),
        click.option("--adb", default=None, help="adb binary."),
        click.option("--python", "python_", default=None, help="Python on the device (doctor: only this one)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _connection(kwargs: dict) -> dict:
    kwargs["python"] = kwargs.pop("python_")
    return {k: kwargs.pop(k) for k in CONNECTION_KEYS}


@click.group("device")
def device():
    """Inspect a device (doctor) and prepare its Python environment (setup)."""


@device.command("doctor")
@_connection_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def doctor(device, as_json, **kwargs):
    """What the device is and can run: OS, CPU, Pythons, runtimes (XNNPACK measured), wheels, next steps.

    Exit status 1 when no runtime can run bench there yet.
    """
    from edge_mobilenet.bench.doctor import run_doctor_command

    text, status = run_doctor_command(device, _connection(kwargs), as_json)
    click.echo(text)
    sys.exit(status)


@device.command("setup")
@_connection_options
@click.option("--runtime", type=click.Choice(["litert", "tflite-runtime", "onnxruntime"]), default=None,
              help="[litert where it has wheels, else tflite-runtime]")
@click.option("--offline", is_flag=True, help="The host downloads the wheels for the device and pushes them.")
@click.option("--wheels", "wheels_dir", default=None, help="Install from the wheels in this host folder (offline).")
@click.option("--root", default=None, help="Device folder for environments [~/.cache/edge-mobilenet/venvs].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def setup(device, runtime, offline, wheels_dir, root, as_json, **kwargs):
    """Create a virtual environment with numpy and a runtime on the device; bench then uses it.

    Idempotent: an environment that already holds them is checked and left as it is.
    """
    from dataclasses import asdict

    from edge_mobilenet.bench.provision import SetupRequest, run_setup_command

    request = SetupRequest(runtime=runtime, offline=offline, wheels_dir=wheels_dir, root=root)
    result = run_setup_command(device, _connection(kwargs), request, lambda m: click.echo(m, err=True))
    click.echo(json.dumps(asdict(result)) if as_json else result.summary())
