"""Measure which builtin operator versions the installed TFLite runtime can load.

Self-contained (stdlib + the runtime): run it where the runtime lives, e.g. on a device::

    ssh pi /opt/tfl/bin/python3 - < edge_mobilenet/convert/op_probe.py > tflite-runtime-2.14.json
    python -m edge_mobilenet.convert.op_probe

It loads, for every operator code and version 1..16, a 192-byte model whose only content is that one
operator code (plus an empty subgraph and buffer), and prints one JSON object:
``{"runtime", "version", "resolved": {code: [versions]}, "other_errors": {...}}``. A runtime resolves
every operator code when it loads a model, so a model loads only if each of its (code, version)
pairs is in ``resolved``. The tables in :mod:`edge_mobilenet.runtimes.runtime_ops` come from here.

The template was written with the flatbuffers builder from TFLite's schema (version 3,
force_defaults) with sentinel values; the probe patches builtin_code (int32 at byte 180), version
(int32 at 184) and deprecated_builtin_code (int8 at 191, ``min(code, 127)``).
"""

import base64
import json
import struct
import sys

TEMPLATE = base64.b64decode(
    "HAAAAFRGTDMAAAAAAAAOABQAEAAMAAgAAAAEAA4AAAAQAAAAOAAAAHQAAAADAAAAAQAAABAAAAAAAAoAGAAAAAwABAAKAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAABAAAAFAAAABAAGAAUABAADAAIAAAABAAQAAAA/////xAAAAAQAAAAEAAAABAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAQAAABAAAAAMABAADwAAAAgABAAMAAAARDMiEYh3ZlUAAAB6")
CODE_OFFSET, VERSION_OFFSET, DEPRECATED_OFFSET = 180, 184, 191
PLACEHOLDER_FOR_GREATER_OP_CODES = 127
NOT_FOUND_MARKERS = ("Didn't find op for builtin opcode", "Op builtin_code out of range")


def probe_model(code: int, version: int) -> bytes:
    """A minimal .tflite needing only builtin ``code`` at ``version``."""
    data = bytearray(TEMPLATE)
    struct.pack_into("<i", data, CODE_OFFSET, code)
    struct.pack_into("<i", data, VERSION_OFFSET, version)
    struct.pack_into("<b", data, DEPRECATED_OFFSET, min(code, PLACEHOLDER_FOR_GREATER_OP_CODES))
    return bytes(data)


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
        return "ai-edge-litert", Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
        return "tflite-runtime", Interpreter


def _version(distribution: str):
    try:
        from importlib.metadata import version
        return version(distribution)
    except Exception:  # metadata missing on some device installs
        return None


def probe(codes=range(256), versions=range(1, 17)) -> dict:
    runtime, interpreter = _interpreter_class()
    resolved, other_errors = {}, {}
    for code in codes:
        for version in versions:
            try:
                interpreter(model_content=probe_model(code, version))
                resolved.setdefault(str(code), []).append(version)
            except ValueError as error:
                if not any(marker in str(error) for marker in NOT_FOUND_MARKERS):
                    other_errors[f"{code}:{version}"] = str(error).strip().splitlines()[0][:160]
    return {"runtime": runtime, "version": _version(runtime), "resolved": resolved,
            "other_errors": other_errors}


if __name__ == "__main__":
    json.dump(probe(), sys.stdout)
    sys.stdout.write("\n")
