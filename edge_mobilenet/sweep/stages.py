"""What a sweep needs from the pipeline's stages, handed in by the caller (``edge_mobilenet.pipeline_stages``).

sweep/ is a sibling of convert/ and bench/ and imports neither: it knows grids, cells, keys, Ray and its
store; the stages know models, formats and devices. Functions that run in Ray workers (``build_source``,
``convert``, ``bench``) must be module-level functions of an importable module (Ray ships them by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Stages:
    # validation, before anything runs
    check_model: Callable  # (recipe row dict, Where) -> None
    check_quantize: Callable  # (overrides dict, where text) -> settings object
    check_device: Callable  # (profile name or .toml path) -> {"name", "transport", "settings"}
    check_bench: Callable  # (bench overrides dict, where text) -> None
    # keys and the driver's own reads and writes (no TensorFlow)
    calibration_hash: Callable  # (settings) -> str
    source_key: Callable  # (recipe row, settings, calibration sha) -> str
    file_source: Callable  # (model file path) -> {"model", "files": {name: bytes}}
    artifact_name: Callable  # (model file name, format) -> artifact file name
    artifact_key: Callable  # (model path, format, settings, calibration sha) -> str
    cached_artifact: Callable  # (folder, artifact name, key) -> entry JSON or None
    commit_artifact: Callable  # (folder, convert result, source path) -> entry JSON
    # work run in Ray workers
    build_source: Callable  # (recipe row, settings) -> {"model", "files"}
    convert: Callable  # (source, format, settings, calibration sha) -> {"entry", "data"}
    bench: Callable  # (entry JSON, bytes, device spec, threads, overrides, attempts, backoff) -> {"run", ...}
