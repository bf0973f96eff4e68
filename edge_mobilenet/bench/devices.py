"""Device profiles: ``benchmarks/devices/NAME.toml`` says how to reach a device and how to run there."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from pathlib import Path

from edge_mobilenet.contracts.records import Where, check
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import read_toml

PROFILE_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "devices"
TRANSPORTS = ("local", "ssh", "adb")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    transport: str = "local"
    host: str | None = None
    user: str | None = None
    port: int | None = None
    identity: str | None = None
    ssh_config: str | None = None
    serial: str | None = None
    adb: str = "adb"
    python: str | None = None
    runtime: str = "auto"
    threads: int = 1
    cpus: str | None = None
    benchmark_binary: str | None = None
    description: str = ""


# Each profile key and the TOML types it takes.
PROFILE_TYPES = {"transport": (str,), "host": (str,), "user": (str,), "port": (int,), "identity": (str,),
                 "ssh_config": (str,), "serial": (str,), "adb": (str,), "python": (str,), "runtime": (str,),
                 "threads": (int,), "cpus": (str,), "benchmark_binary": (str,), "description": (str,)}


def load_profile(name: str, profile_dir: Path = PROFILE_DIR) -> DeviceProfile:
    """A profile by name (``pi``) or path (``my-board.toml``); unknown keys are an error."""
    path = Path(name) if name.endswith(".toml") else profile_dir / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in profile_dir.glob("*.toml")))
        raise EdgeError(f"{path}: no such device profile (known: {known})")
    data = read_toml(path, "device profile")
    where = Where(path)
    for key, value in data.items():
        if key not in PROFILE_TYPES:
            close = difflib.get_close_matches(key, list(PROFILE_TYPES), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(PROFILE_TYPES))}"
            raise EdgeError(f"{path}: unknown setting {key!r} ({hint})")
        if value != "":  # "" leaves a setting unset (to be given by a flag)
            check(value, where / key, PROFILE_TYPES[key])
    data = {k: (None if v == "" else v) for k, v in data.items()}
    if (data.get("threads") or 1) < 1:
        raise (where / "threads").fail(f"must be >= 1; received {data['threads']}")
    profile = DeviceProfile(name=path.stem, **data)
    if profile.transport not in TRANSPORTS:
        raise EdgeError(f"{path}: transport must be one of {', '.join(TRANSPORTS)}. "
                        f"Received transport={profile.transport}")
    return profile


def with_overrides(profile: DeviceProfile, **overrides) -> DeviceProfile:
    """Command-line flags win over the profile; None means 'not given'."""
    return replace(profile, **{k: v for k, v in overrides.items() if v is not None})


def make_transport(profile: DeviceProfile):
    from edge_mobilenet.bench import transports

    if profile.transport == "local":
        return transports.LocalTransport(profile.python)
    if profile.transport == "ssh":
        if not profile.host:
            raise EdgeError(f"device {profile.name}: ssh needs a host (--host or host = ... in the profile)")
        return transports.SshTransport(transports.SshTarget(profile.host, profile.user, profile.port,
                                                            profile.identity, profile.ssh_config),
                                       profile.python or "python3")
    return transports.AdbTransport(transports.AdbTarget(profile.serial, profile.adb), profile.python or "python3")
