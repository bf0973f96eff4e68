"""Can a given runtime release load this artifact? Decided from the file alone, without TensorFlow.

A .tflite file lists every operator it uses once, in ``Model.operator_codes``, as (builtin code,
version, custom code); a runtime resolves each entry at load time and refuses the whole model when
one is missing ("Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'"). This module
reads that list with a small flatbuffer reader (stdlib only) and compares it with the versions each
release registers (:mod:`edge_mobilenet.runtimes.runtime_ops`). An .onnx file is checked by its
default-domain opset and IR version against ONNX Runtime releases.

Flatbuffer layout used (tensorflow/lite/schema/schema.fbs): the root table ``Model`` has
``operator_codes`` as field 1; ``OperatorCode`` has ``deprecated_builtin_code: byte`` (field 0),
``custom_code: string`` (1), ``version: int = 1`` (2) and ``builtin_code: BuiltinOperator`` (3). The
operator is ``max(builtin_code, deprecated_builtin_code)``, as in tflite::GetBuiltinCode.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from edge_mobilenet.runtimes.runtime_ops import (NEWEST, ONNXRUNTIME_LIMITS, TFLITE_MAX_VERSIONS,
                                                TFLITE_MIN_VERSIONS)
from edge_mobilenet.runtimes.tflite_ops import CUSTOM, operator_name
from edge_mobilenet.errors import EdgeError

TFLITE_IDENTIFIER = b"TFL3"
RUNTIME_NAMES = ("tflite-runtime", "ai-edge-litert", "onnxruntime")


class _FlatBuffer:
    """Just enough of the flatbuffer wire format to walk tables, vectors and strings."""

    def __init__(self, data: bytes):
        self.data = data

    def u32(self, pos: int) -> int:
        return struct.unpack_from("<I", self.data, pos)[0]

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field ``index`` of the table at ``table``, or None if absent."""
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        vtable_size = struct.unpack_from("<H", self.data, vtable)[0]
        slot = 4 + 2 * index
        if slot >= vtable_size:
            return None
        offset = struct.unpack_from("<H", self.data, vtable + slot)[0]
        return table + offset if offset else None

    def scalar(self, table: int, index: int, fmt: str, default: int) -> int:
        pos = self.field(table, index)
        return default if pos is None else struct.unpack_from(fmt, self.data, pos)[0]

    def tables(self, table: int, index: int) -> list[int]:
        pos = self.field(table, index)
        if pos is None:
            return []
        vector = pos + self.u32(pos)
        return [vector + 4 + 4 * i + self.u32(vector + 4 + 4 * i) for i in range(self.u32(vector))]

    def string(self, table: int, index: int) -> str | None:
        pos = self.field(table, index)
        if pos is None:
            return None
        start = pos + self.u32(pos)
        return self.data[start + 4:start + 4 + self.u32(start)].decode("utf-8", "replace")


def _read_tflite(path: Path) -> bytes:
    if not path.is_file():
        raise EdgeError(f"{path}: no such file")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise EdgeError(f"{path}: not a TFLite model (no 'TFL3' identifier)")
    return data


def required_ops(path: str | Path) -> list[dict]:
    """The operators a .tflite file needs: ``[{"op": "CONV_2D", "version": 3}, ...]`` in file order.

    Custom operators read ``{"op": "CUSTOM", "version": 1, "custom_code": "..."}``.
    """
    path = Path(path)
    buffer = _FlatBuffer(_read_tflite(path))
    try:
        model = buffer.u32(0)
        ops = []
        for code_table in buffer.tables(model, 1):
            deprecated = buffer.scalar(code_table, 0, "<b", 0)
            code = max(buffer.scalar(code_table, 3, "<i", 0), deprecated)
            entry = {"op": operator_name(code), "version": buffer.scalar(code_table, 2, "<i", 1)}
            if code == CUSTOM:
                entry["custom_code"] = buffer.string(code_table, 1)
            ops.append(entry)
    except (struct.error, IndexError):
        raise EdgeError(f"{path}: corrupt TFLite flatbuffer (operator codes unreadable)") from None
    return ops


@dataclass(frozen=True)
class CompatResult:
    """Whether ``runtime`` can load ``artifact``; ``problems`` says why not, one line each."""

    artifact: str
    runtime: str
    ok: bool
    problems: list[str] = field(default_factory=list)

    def verdict(self) -> str:
        if self.ok:
            return f"{self.runtime}: loads {self.artifact}"
        return f"{self.runtime}: REFUSES {self.artifact}: " + "; ".join(self.problems)

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "runtime": self.runtime, "loads": self.ok,
                "problems": list(self.problems)}


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def parse_runtime(spec: str) -> tuple[str, str]:
    """``"tflite-runtime==2.14"`` -> (name, known table key); ``"ai-edge-litert"`` -> the newest known.

    A patch release (``==2.14.0``) maps to its minor release's table.
    """
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(?:==\s*(\d+(?:\.\d+)*))?\s*", spec or "")
    name = match.group(1).lower().replace("_", "-") if match else ""
    if name not in RUNTIME_NAMES:
        raise EdgeError(f"unknown runtime {spec!r}; expected NAME or NAME==VERSION with NAME one of "
                        f"{', '.join(RUNTIME_NAMES)}")
    version = match.group(2)
    if name == "onnxruntime":
        known = sorted(ONNXRUNTIME_LIMITS, key=_version_tuple)
        minor = ".".join(version.split(".")[:2]) if version else known[-1]
        if minor not in ONNXRUNTIME_LIMITS and _version_tuple(minor) > _version_tuple(known[-1]):
            minor = known[-1]  # newer than the table: at least what the newest known release loads
        if minor not in ONNXRUNTIME_LIMITS:
            raise EdgeError(f"no ONNX Runtime data for {spec!r}; known: {', '.join(known)}")
        return name, minor
    if version is None:
        return name, NEWEST[name]
    key = f"{name}==" + ".".join(version.split(".")[:2])
    if key not in TFLITE_MAX_VERSIONS:
        known = ", ".join(k for k in TFLITE_MAX_VERSIONS if k.startswith(name))
        raise EdgeError(f"no operator table for {spec!r}; known: {known}")
    return name, key


# Custom ops every TFLite release's BuiltinOpResolver registers itself (tensorflow/lite/kernels/register.cc:
# AddCustom since TF 1.x): SSD detectors' post-processing runs without extra registration.
RESOLVER_CUSTOM_OPS = ("TFLite_Detection_PostProcess",)


def _tflite_problems(ops: list[dict], key: str) -> list[str]:
    maxima = TFLITE_MAX_VERSIONS[key]
    release = key.split("==")[1]
    problems = []
    for op in ops:
        name, version = op["op"], op["version"]
        if name == "CUSTOM" and op.get("custom_code") in RESOLVER_CUSTOM_OPS:
            continue
        if name == "CUSTOM":
            problems.append(f"custom op {op.get('custom_code')!r} needs a registered custom kernel")
        elif name not in maxima:
            problems.append(f"{name} v{version} is not a builtin in {release}")
        elif version > maxima[name]:
            problems.append(f"{name} v{version} > {release}'s max v{maxima[name]}")
        elif version < TFLITE_MIN_VERSIONS.get(name, 1):
            problems.append(f"{name} v{version} < {release}'s min v{TFLITE_MIN_VERSIONS[name]}")
    return problems


def _onnx_problems(path: Path, release: str) -> list[str]:
    from edge_mobilenet.runtimes.onnx import onnx_io_spec

    spec = onnx_io_spec(path)
    max_opset, max_ir = ONNXRUNTIME_LIMITS[release]
    problems = []
    if spec["opset"] > max_opset:
        problems.append(f"opset {spec['opset']} > onnxruntime {release}'s max opset {max_opset}")
    if spec["ir_version"] > max_ir:
        problems.append(f"IR version {spec['ir_version']} > onnxruntime {release}'s max IR {max_ir}")
    return problems


def check_compat(path: str | Path, runtime_spec: str) -> CompatResult:
    """Whether ``runtime_spec`` (``tflite-runtime==2.14``, ``ai-edge-litert``, ``onnxruntime==1.16``)
    can load the .tflite or .onnx file at ``path``."""
    path = Path(path)
    name, key = parse_runtime(runtime_spec)
    is_onnx = path.suffix.lower() == ".onnx"
    if is_onnx != (name == "onnxruntime"):
        kind = "an ONNX model" if is_onnx else "a TFLite model"
        raise EdgeError(f"{path}: {kind} can't run on {name}")
    if is_onnx:
        label = f"onnxruntime=={key}"
        problems = _onnx_problems(path, key)
    else:
        label = key
        problems = _tflite_problems(required_ops(path), key)
    return CompatResult(str(path), label, not problems, problems)
