"""Sweep files (``benchmarks/sweeps/default.toml``): a grid of models x widths x sizes x formats x devices x
thread counts, validated whole before anything runs, expanded into cells.

The grid's structure (keys, types, lists) is checked here; what its values mean (a model name, a train
table, a format option, a device profile, a bench setting) is checked by the stages that own them,
through :class:`edge_mobilenet.sweep.stages.Stages` (sweep imports no sibling stage).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from edge_mobilenet.contracts.formats import parse_formats
from edge_mobilenet.contracts.records import Where, check, check_keys, get
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import read_toml

TOP_KEYS = {"name": (str,), "output": (str,), "formats": (list,), "devices": (list,), "threads": (list,),
            "io": (str,), "onnx_activation_type": (str,), "onnx_calibration_method": (str,), "eval": (str,),
            "ptq": (str,),
            "eval_count": (int,), "calibration": (dict,), "bench": (dict,), "retry": (dict,), "model": (list,)}
CALIBRATION_KEYS = {"folder": (str,), "count": (int,), "seed": (int,), "skip_corrupt": (bool,)}
BENCH_KEYS = {"warmup_runs": (int,), "warmup_seconds": (float,), "min_runs": (int,), "min_seconds": (float,),
              "max_seconds": (float,), "timeout": (float,), "eval_count": (int,), "cpus": (str,),
              "device": (dict,)}
RETRY_KEYS = {"attempts": (int,), "backoff_seconds": (float,)}
MODEL_KEYS = {"name": (str,), "file": (str,), "alpha": (float,), "alphas": (list,), "size": (int,),
              "sizes": (list,), "classes": (int,), "train": (dict,), "formats": (list,)}


def digest(value) -> str:
    """A content key: sha256 of the canonical JSON of ``value``."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Variant:
    """One float source of the grid: a registered model at one width/size (trained or random), or a file."""

    source: str
    alpha: float
    size: int
    classes: int
    train: tuple | None  # the train table's (key, value) pairs, sorted; None: random weights
    formats: tuple[str, ...]
    is_file: bool = False

    @property
    def label(self) -> str:
        if self.is_file:
            return Path(self.source).stem
        return f"{self.source} {self.alpha:g}/{self.size}" + ("" if self.train else " random")

    def row(self) -> dict:
        """The variant as one recipe model row (what the convert stage reads)."""
        row = {"file": self.source} if self.is_file else {"name": self.source, "alpha": self.alpha,
                                                             "size": self.size, "classes": self.classes}
        return {**row, **({"train": dict(self.train)} if self.train else {})}


@dataclass(frozen=True)
class Device:
    """A device profile as the bench stage resolved it: its name, transport and settings (the key)."""

    name: str
    transport: str
    settings: dict
    spec: str  # as written in the sweep file: a profile name or a .toml path

    @property
    def resource(self) -> str:
        return f"device:{self.name}"


@dataclass(frozen=True)
class Sweep:
    path: Path
    name: str
    output: Path
    variants: tuple[Variant, ...]
    devices: tuple[Device, ...]
    threads: tuple[int, ...]
    quantize: dict  # QuantizeSettings overrides, as a recipe gives them
    bench: dict  # BenchSettings overrides
    bench_per_device: dict = field(default_factory=dict)  # device name -> overrides on top of ``bench``
    attempts: int = 3
    backoff_seconds: float = 2.0
    quantize_settings: object = field(default=None, compare=False)

    def bench_for(self, device: Device) -> dict:
        """The bench settings of ``device``'s cells: ``[bench]`` with its ``[bench.device.NAME]`` on top."""
        return {**self.bench, **self.bench_per_device.get(device.name, {})}

    def convert_cells(self) -> list[tuple[Variant, str]]:
        return [(v, f) for v in self.variants for f in v.formats]

    def bench_cells(self) -> list[tuple[Variant, str, Device, int]]:
        return [(v, f, d, t) for v in self.variants for f in v.formats for d in self.devices for t in self.threads]


def _list(table: dict, key: str, where: Where, kinds: tuple, default=None) -> list:
    values = get(table, key, where, (list,), default)
    if values is None:
        return []
    if not values:
        raise (where / key).fail("is an empty list")
    items = [check(v, where / key / i, kinds) for i, v in enumerate(values)]
    if len(set(map(str, items))) != len(items):
        raise (where / key).fail(f"lists a value twice: {items}")
    return items


def _formats(names: list[str], where: Where) -> tuple[str, ...]:
    try:
        return tuple(f.name for f in parse_formats(",".join(names)))
    except EdgeError as error:
        raise where.fail(str(error)) from None


def _axis(row: dict, one: str, many: str, where: Where, kinds: tuple, default) -> list:
    if one in row and many in row:
        raise where.fail(f"gives both {one} and {many}; give one")
    return _list(row, many, where, kinds) if many in row else [row.get(one, default)]


def _variants(row, where: Where, formats: tuple[str, ...], stages) -> list[Variant]:
    row = check(row, where, (dict,))
    check_keys(row, MODEL_KEYS, where, "a sweep key")
    if ("name" in row) == ("file" in row):
        raise where.fail("needs exactly one of name (a registered model) or file (a .keras/.h5 path)")
    own = _formats(_list(row, "formats", where, (str,)), where / "formats") if "formats" in row else formats
    if "file" in row:
        if {"alpha", "alphas", "size", "sizes", "classes", "train"} & set(row):
            raise where.fail("a file model takes no alpha/size/classes/train (they are in the file)")
        stages.check_model({"file": row["file"]}, where)
        return [Variant(row["file"], 1.0, 0, 0, None, own, is_file=True)]
    if "train" in row and "classes" in row:
        raise (where / "classes").fail("is set by the training data when the model has a train table; remove it")
    alphas = [float(a) for a in _axis(row, "alpha", "alphas", where, (float,), 1.0)]
    sizes = _axis(row, "size", "sizes", where, (int,), 224)
    found = []
    for alpha in alphas:
        for size in sizes:
            train = tuple(sorted(row["train"].items())) if "train" in row else None
            variant = Variant(row["name"], alpha, size, row.get("classes", 1000), train, own)
            stages.check_model(variant.row(), where)
            found.append(variant)
    return found


def _quantize_overrides(data: dict) -> dict:
    calibration = data.get("calibration", {})
    overrides = {key: data.get(key) for key in ("io", "onnx_activation_type", "onnx_calibration_method",
                                                "eval_count", "ptq")}
    overrides.update(eval_dir=data.get("eval"),
                     **{k: calibration.get(v) for k, v in (("calibration", "folder"), ("count", "count"),
                                                            ("seed", "seed"), ("skip_corrupt", "skip_corrupt"))})
    # workers may run in another folder: paths are made absolute on the driver (relative to where it runs)
    for key in ("calibration", "eval_dir"):
        if overrides.get(key):
            overrides[key] = str(Path(overrides[key]).absolute())
    return {k: v for k, v in overrides.items() if v is not None}


def _devices(data: dict, where: Where, stages, base: Path) -> tuple[Device, ...]:
    specs = _list(data, "devices", where, (str,), ["local"])
    devices = []
    for i, spec in enumerate(specs):
        path = spec if not spec.endswith(".toml") or Path(spec).is_absolute() else str(base / spec)
        try:
            devices.append(stages.check_device(path if Path(path).is_file() else spec))
        except EdgeError as error:
            raise (where / "devices" / i).fail(str(error)) from None
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise (where / "devices").fail(f"names one device twice: {names}")
    return tuple(devices)


def _bench_settings(table: dict) -> dict:
    return {("timeout_s" if k == "timeout" else k): v for k, v in table.items() if k != "device"}


def _bench(data: dict, where: Where, stages, path: str) -> tuple[dict, dict]:
    """``[bench]`` and its per-device ``[bench.device.NAME]`` tables (a slow board may want fewer runs)."""
    table = data.get("bench", {})
    bench = _bench_settings(table)
    stages.check_bench(bench, path)
    per_device = {}
    for name, overrides in get(table, "device", where / "bench", (dict,), {}).items():
        at = where / "bench" / "device" / name
        check(overrides, at, (dict,))
        check_keys(overrides, {k: v for k, v in BENCH_KEYS.items() if k != "device"}, at, "a bench key")
        per_device[name] = _bench_settings(overrides)
        stages.check_bench({**bench, **per_device[name]}, f"{path}: bench.device.{name}")
    return bench, per_device


def load_sweep(path: str | Path, stages) -> Sweep:
    """The sweep at ``path``, validated whole (grid and values); EdgeError naming the file and key."""
    path = Path(path)
    data = read_toml(path, "sweep file")
    where = Where(path)
    if isinstance(data.get("model"), dict):
        raise (where / "model").fail("must be [[model]] tables (an array), not one [model] table")
    check_keys(data, TOP_KEYS, where, "a sweep key")
    for key, known in (("calibration", CALIBRATION_KEYS), ("bench", BENCH_KEYS), ("retry", RETRY_KEYS)):
        check_keys(data.get(key, {}), known, where / key, "a sweep key")
    if not data.get("model"):
        raise where.fail("has no [[model]] tables")
    quantize = _quantize_overrides(data)
    settings = stages.check_quantize(quantize, str(path))
    formats = _formats(_list(data, "formats", where, (str,), ["fp32", "int8"]), where / "formats")
    variants = [v for i, row in enumerate(data["model"]) for v in _variants(row, where / "model" / i, formats,
                                                                             stages)]
    if len({v.row().__repr__() for v in variants}) != len(variants):
        raise (where / "model").fail("lists the same model variant twice")
    threads = _list(data, "threads", where, (int,), [1])
    if min(threads) < 1:
        raise (where / "threads").fail(f"must be >= 1; received {threads}")
    bench, per_device = _bench(data, where, stages, str(path))
    devices = _devices(data, where, stages, path.parent)
    unknown = set(per_device) - {d.name for d in devices}
    if unknown:
        raise (where / "bench" / "device").fail(f"names {sorted(unknown)[0]!r}, which is not one of the sweep's "
                                                f"devices ({', '.join(d.name for d in devices)})")
    retry = data.get("retry", {})
    attempts, backoff = retry.get("attempts", 3), float(retry.get("backoff_seconds", 2.0))
    if attempts < 1 or backoff < 0:
        raise (where / "retry").fail(f"needs attempts >= 1 and backoff_seconds >= 0; received {retry}")
    name = get(data, "name", where, (str,), path.stem)
    output = Path(get(data, "output", where, (str,), f"build/sweeps/{name}"))
    return Sweep(path, name, output, tuple(variants), devices, tuple(threads), quantize, bench, per_device,
                 attempts, backoff, settings)
