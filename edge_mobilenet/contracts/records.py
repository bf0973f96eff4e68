"""The typed records the stages exchange: tensor specs, artifact entries (manifest) and runs (results).

Each record is a frozen dataclass with ``to_json`` and ``from_json``. ``from_json`` validates what it
reads (files on disk are never trusted): a missing or mistyped key is an EdgeError naming the file and
the key. The records are task-generic: an artifact has a ``task`` (``classification`` now), a list of
output tensor specs, and metrics keyed by name (``top1``, ``top5``; later ``map``, ``map50``), so a new
task adds metric names and rows, not switches. Older files are migrated on read (``migrate_entry``).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from typing import Any

from edge_mobilenet.errors import EdgeError

TASKS = ("classification", "detection")
RUN_STATUSES = ("ok", "failed")


class Where:
    """Names the place a value came from in error messages: ``FILE: artifacts[2].input.shape``."""

    def __init__(self, file: str, path: str = ""):
        self.file, self.path = str(file), path

    def __truediv__(self, key) -> "Where":
        step = f"[{key}]" if isinstance(key, int) else (f".{key}" if self.path else str(key))
        return Where(self.file, self.path + step)

    def fail(self, problem: str) -> EdgeError:
        return EdgeError(f"{self.file}: {self.path} {problem}" if self.path else f"{self.file}: {problem}")


_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true/false", type(None): "null"}


def get(data: dict, key: str, where: Where, kinds: tuple, default: Any = ...) -> Any:
    """``data[key]`` checked against ``kinds``; a missing key is an error unless a default is given."""
    if key not in data:
        if default is ...:
            raise (where / key).fail("is missing")
        return default
    return check(data[key], where / key, kinds)


def check(value: Any, where: Where, kinds: tuple) -> Any:
    """``value`` if it is one of ``kinds`` (``float`` also takes integers; ``bool`` is not an integer)."""
    if not any(_is(value, kind) for kind in kinds):
        expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise where.fail(f"must be {expected}, not {_describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise where.fail(f"must be a finite number, not {value}")
    return value


def check_keys(table: dict, known: dict, where: Where, what: str) -> None:
    """Every key of ``table`` is one of ``known`` (key -> kinds) and of its kinds; an unknown key's
    error names the closest known one (``what``: "a recipe key", "a sweep key")."""
    for key, value in table.items():
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise (where / key).fail(f"is not {what}{hint}")
        check(value, where / key, known[key])


def _is(value: Any, kind: type) -> bool:
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{_TYPE_NAMES.get(type(value), type(value).__name__)} {text[:40]}"


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, shape, dtype and (for integer tensors) its quantization."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None

    @property
    def quantized(self) -> bool:
        return self.scale is not None

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "scale": self.scale,
                "zero_point": self.zero_point}

    @classmethod
    def from_json(cls, data: Any, where: Where) -> "TensorSpec":
        data = check(data, where, (dict,))
        shape = get(data, "shape", where, (list,))
        for index, dim in enumerate(shape):
            check(dim, where / "shape" / index, (int, type(None)))
        scale = get(data, "scale", where, (float, type(None)), None)
        zero_point = get(data, "zero_point", where, (int, type(None)), None)
        if (scale is None) != (zero_point is None) or (scale is not None and scale <= 0):
            raise where.fail(f"has scale {scale} and zero_point {zero_point}: both or neither, scale > 0")
        return cls(get(data, "name", where, (str,), ""), tuple(shape), get(data, "dtype", where, (str,)),
                   float(scale) if scale is not None else None, zero_point)


PREPROCESSING_KEYS = {"name": (str,), "mean": (float,), "std": (float,), "crop_fraction": (float,)}


def check_preprocessing(data: Any, where: Where) -> dict:
    data = check(data, where, (dict,))
    values = {k: get(data, k, where, kinds) for k, kinds in PREPROCESSING_KEYS.items()}
    if values["std"] == 0 or not 0 < values["crop_fraction"] <= 1:
        raise where.fail("has std 0 or a crop_fraction outside (0, 1]")
    return values


@dataclass(frozen=True)
class Validation:
    """How an artifact did on held-out images at conversion time, against its float model."""

    eval_images: int
    eval_set: str
    agreement_with_float: float
    max_abs_diff_vs_float: float
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. {"top1": 0.93}
    float_metrics: dict[str, float] = field(default_factory=dict)
    paired: dict | None = None  # contracts.paired.PairedFidelity.to_dict() against float, same images

    def to_json(self) -> dict:
        data = {"eval_images": self.eval_images, "eval_set": self.eval_set,
                "top1_agreement_with_float": self.agreement_with_float,
                "max_abs_diff_vs_float": self.max_abs_diff_vs_float,
                "metrics": dict(self.metrics), "float_metrics": dict(self.float_metrics)}
        return {**data, "paired": dict(self.paired)} if self.paired is not None else data

    @classmethod
    def from_json(cls, data: Any, where: Where) -> "Validation":
        data = check(data, where, (dict,))
        return cls(get(data, "eval_images", where, (int,)), get(data, "eval_set", where, (str,), ""),
                   get(data, "top1_agreement_with_float", where, (float,)),
                   get(data, "max_abs_diff_vs_float", where, (float,)),
                   _metrics(data, "metrics", where), _metrics(data, "float_metrics", where),
                   get(data, "paired", where, (dict, type(None)), None))


def _metrics(data: dict, key: str, where: Where) -> dict[str, float]:
    values = get(data, key, where, (dict,), {})
    return {name: check(value, where / key / name, (float,)) for name, value in values.items()}


@dataclass(frozen=True)
class CalibrationRecord:
    """Which images calibrated an artifact: the folder, how many were asked for and used, the seed that
    chose them, the content hash of the chosen files, the undecodable ones skipped, and the set's
    provenance (source, licence) from its own manifest."""

    folder: str
    count: int
    seed: int
    sha256: str
    requested_count: int | None = None
    skipped_corrupt: tuple[str, ...] = ()
    source: str | None = None
    licence: str | None = None

    def to_json(self) -> dict:
        return {"folder": self.folder, "requested_count": self.requested_count, "count": self.count,
                "seed": self.seed, "sha256": self.sha256, "skipped_corrupt": list(self.skipped_corrupt),
                "source": self.source, "licence": self.licence}

    @classmethod
    def from_json(cls, data: Any, where: Where) -> "CalibrationRecord":
        data = check(data, where, (dict,))
        text = (str, type(None))
        return cls(get(data, "folder", where, (str,)), get(data, "count", where, (int,)),
                   get(data, "seed", where, (int,)), get(data, "sha256", where, (str,)),
                   get(data, "requested_count", where, (int, type(None)), None),
                   tuple(get(data, "skipped_corrupt", where, (list,), [])),
                   get(data, "source", where, text, None), get(data, "licence", where, text, None))


# Entry keys with a typed field; every other key of an entry is a format-specific fact kept as is.
_ENTRY_FIELDS = ("file", "format", "runtime", "baseline", "task", "sha256", "size_bytes", "input", "outputs",
                 "model", "source", "trained_weights", "class_names", "label_offset", "dataset", "params",
                 "macs", "calibration", "validation")


@dataclass(frozen=True)
class ArtifactEntry:
    """One artifact in a manifest: what it is, where it came from, how it takes input and how it did.

    ``facts`` holds the format-specific records (conversion recipe, operators, runtime compatibility,
    XNNPACK delegation, accuracy-aware search, tool versions, cache key) under their own keys.
    """

    file: str
    format: str
    runtime: str
    baseline: str
    sha256: str
    size_bytes: int
    input: TensorSpec
    preprocessing: dict
    outputs: tuple[TensorSpec, ...]
    task: str = "classification"
    model: str | None = None
    source_file: str | None = None
    source_sha256: str | None = None
    trained_weights: bool = False
    class_names: tuple[str, ...] = ()
    label_offset: int = 0  # 1 for 1001-class models (index 0 = background) on 1000-class labels
    dataset: dict | None = None
    params: int | None = None
    macs: int | None = None
    calibration: CalibrationRecord | None = None
    validation: Validation | None = None
    facts: dict = field(default_factory=dict)

    @property
    def output(self) -> TensorSpec:
        return self.outputs[0]

    @property
    def num_classes(self) -> int:
        return int(self.output.shape[-1]) - self.label_offset

    @property
    def is_baseline(self) -> bool:
        return self.format == self.baseline

    def to_json(self) -> dict:
        data = {"file": self.file, "format": self.format, "runtime": self.runtime, "baseline": self.baseline,
                "task": self.task, "sha256": self.sha256, "size_bytes": self.size_bytes, "model": self.model,
                "source": {"file": self.source_file, "sha256": self.source_sha256},
                "trained_weights": self.trained_weights, "class_names": list(self.class_names),
                "label_offset": self.label_offset, "dataset": self.dataset, "params": self.params,
                "macs": self.macs, "calibration": self.calibration.to_json() if self.calibration else None}
        data.update(self.facts)
        data["input"] = {**self.input.to_json(), "preprocessing": dict(self.preprocessing)}
        data["outputs"] = [o.to_json() for o in self.outputs]
        if self.validation is not None:
            data["validation"] = self.validation.to_json()
        return data

    @classmethod
    def from_json(cls, data: Any, where: Where) -> "ArtifactEntry":
        data = migrate_entry(check(data, where, (dict,)))
        file = get(data, "file", where, (str,))
        source = get(data, "source", where, (dict,), {})
        task = get(data, "task", where, (str,), "classification")
        if task not in TASKS:
            raise (where / "task").fail(f"is {task!r}; known tasks: {', '.join(TASKS)}")
        outputs = get(data, "outputs", where, (list,))
        if not outputs:
            raise (where / "outputs").fail("is empty")
        validation = get(data, "validation", where, (dict, type(None)), None)
        calibration = get(data, "calibration", where, (dict, type(None)), None)
        return cls(
            file=file, format=get(data, "format", where, (str,)), runtime=get(data, "runtime", where, (str,)),
            baseline=get(data, "baseline", where, (str,), "fp32"), sha256=get(data, "sha256", where, (str,)),
            size_bytes=get(data, "size_bytes", where, (int,)),
            input=TensorSpec.from_json(get(data, "input", where, (dict,)), where / "input"),
            preprocessing=check_preprocessing(get(data["input"], "preprocessing", where / "input", (dict,)),
                                              where / "input" / "preprocessing"),
            outputs=tuple(TensorSpec.from_json(o, where / "outputs" / i) for i, o in enumerate(outputs)),
            task=task, model=get(data, "model", where, (str, type(None)), None),
            source_file=get(source, "file", where / "source", (str, type(None)), None),
            source_sha256=get(source, "sha256", where / "source", (str, type(None)), None),
            trained_weights=get(data, "trained_weights", where, (bool,), False),
            class_names=tuple(str(c) for c in get(data, "class_names", where, (list,), [])),
            label_offset=get(data, "label_offset", where, (int,), 0),
            dataset=get(data, "dataset", where, (dict, type(None)), None),
            params=get(data, "params", where, (int, type(None)), None),
            macs=get(data, "macs", where, (int, type(None)), None),
            calibration=CalibrationRecord.from_json(calibration, where / "calibration") if calibration else None,
            validation=Validation.from_json(validation, where / "validation") if validation else None,
            facts={k: v for k, v in data.items() if k not in _ENTRY_FIELDS})


def migrate_entry(data: dict) -> dict:
    """A schema-1 entry (one ``output``, ``top1``/``float_top1`` in ``validation``) in today's shape."""
    if "outputs" in data or "output" not in data:
        return data
    data = dict(data)
    data["outputs"] = [data.pop("output")]
    validation = data.get("validation")
    if isinstance(validation, dict) and "metrics" not in validation:
        validation = dict(validation)
        metrics = {"top1": validation.pop("top1")} if "top1" in validation else {}
        floats = {"top1": validation.pop("float_top1")} if "float_top1" in validation else {}
        data["validation"] = {**validation, "metrics": metrics, "float_metrics": floats}
    if isinstance(data.get("output_spec"), dict):  # never written; guards hand-made files
        data.pop("output_spec")
    if "label_offset" not in data and data["outputs"] and isinstance(data["outputs"][0], dict):
        classes = len(data.get("class_names") or [])
        shape = data["outputs"][0].get("shape") or [0]
        data["label_offset"] = 1 if classes and isinstance(shape[-1], int) and shape[-1] == classes + 1 else 0
    return data


# Run keys with a typed field; any other key is kept in ``extra``.
_RUN_FIELDS = ("timestamp_utc", "status", "artifact", "format", "runtime_kind", "baseline_format",
               "source_sha256", "sha256", "size_bytes", "params", "macs", "device_name", "transport",
               "device", "runtime", "latency", "memory", "accuracy", "settings", "emulated", "valid",
               "warnings", "commit", "tool_versions", "error", "outputs_sha256", "task", "profile")
_OPTIONAL_DICT = (dict, type(None))


@dataclass(frozen=True)
class RunRecord:
    """One artifact benchmarked on one device: latency (ms), memory, accuracy metrics keyed by name."""

    status: str
    artifact: str
    format: str
    runtime_kind: str
    device_name: str
    baseline_format: str = "fp32"
    task: str = "classification"
    timestamp_utc: str | None = None
    source_sha256: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    params: int | None = None
    macs: int | None = None
    transport: str | None = None
    device: dict | None = None
    runtime: dict | None = None
    latency: dict | None = None
    memory: dict | None = None
    accuracy: dict | None = None  # {"images", "top1", "top5", "float_top1", ...}
    settings: dict = field(default_factory=dict)
    emulated: bool = False
    valid: bool = False
    warnings: tuple[str, ...] = ()
    commit: dict | None = None
    tool_versions: dict | None = None
    error: str | None = None
    outputs_sha256: str | None = None
    profile: dict | None = None  # per-layer latency on the device (bench --profile N): runtimes.profiling
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def threads(self) -> int | None:
        return self.settings.get("threads")

    def metric(self, name: str) -> float | None:
        return (self.accuracy or {}).get(name) if self.ok else None

    def latency_ms(self, key: str) -> float | None:
        value = (self.latency or {}).get(key) if self.ok else None
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data["warnings"] = list(self.warnings)
        for optional in ("error", "outputs_sha256", "profile"):
            if data[optional] is None:
                del data[optional]
        return {**data, **self.extra}

    @classmethod
    def from_json(cls, data: Any, where: Where) -> "RunRecord":
        data = check(data, where, (dict,))
        status = get(data, "status", where, (str,))
        if status not in RUN_STATUSES:
            raise (where / "status").fail(f"is {status!r}, not one of {', '.join(RUN_STATUSES)}")
        named = {k: get(data, k, where, (str,)) for k in ("artifact", "format", "runtime_kind", "device_name")}
        latency = get(data, "latency", where, _OPTIONAL_DICT, None)
        if status == "ok":
            if latency is None:
                raise (where / "latency").fail("is missing from a run with status ok")
            get(latency, "p50_ms", where / "latency", (float,))
        accuracy = get(data, "accuracy", where, _OPTIONAL_DICT, None)
        for name, value in (accuracy or {}).items():  # numbers, and the paired comparison's object
            check(value, where / "accuracy" / name, (dict, type(None)) if name == "paired"
                  else (float, int, type(None)))
        optional = {k: get(data, k, where, _OPTIONAL_DICT, None)
                    for k in ("device", "runtime", "memory", "commit", "tool_versions", "profile")}
        return cls(
            status=status, **named, baseline_format=get(data, "baseline_format", where, (str,), "fp32"),
            task=get(data, "task", where, (str,), "classification"),
            timestamp_utc=get(data, "timestamp_utc", where, (str, type(None)), None),
            source_sha256=get(data, "source_sha256", where, (str, type(None)), None),
            sha256=get(data, "sha256", where, (str, type(None)), None),
            size_bytes=get(data, "size_bytes", where, (int, type(None)), None),
            params=get(data, "params", where, (int, type(None)), None),
            macs=get(data, "macs", where, (int, type(None)), None),
            transport=get(data, "transport", where, (str, type(None)), None),
            latency=latency, accuracy=accuracy, settings=get(data, "settings", where, (dict,), {}),
            emulated=get(data, "emulated", where, (bool,), False), valid=get(data, "valid", where, (bool,), False),
            warnings=tuple(check(w, where / "warnings" / i, (str,))
                           for i, w in enumerate(get(data, "warnings", where, (list,), []))),
            error=get(data, "error", where, (str, type(None)), None),
            outputs_sha256=get(data, "outputs_sha256", where, (str, type(None)), None),
            extra={k: v for k, v in data.items() if k not in _RUN_FIELDS}, **optional)
