"""The pipeline's stages wired for ``edge-bench sweep`` (sweep/ imports no sibling stage; this module,
like cli.py, sits above them all)."""

from __future__ import annotations

from edge_mobilenet.bench import cell as bench_cell
from edge_mobilenet.convert import cell as convert_cell
from edge_mobilenet.sweep.spec import Device
from edge_mobilenet.sweep.stages import Stages


def _device(spec: str) -> Device:
    found = bench_cell.check_device(spec)
    return Device(found["name"], found["transport"], found["settings"], spec)


STAGES = Stages(
    check_model=convert_cell.check_model, check_quantize=convert_cell.check_quantize, check_device=_device,
    check_bench=bench_cell.check_bench, calibration_hash=convert_cell.calibration_hash,
    source_key=convert_cell.source_key, file_source=convert_cell.file_source,
    artifact_name=convert_cell.artifact_name, artifact_key=convert_cell.artifact_key,
    cached_artifact=convert_cell.cached_artifact, commit_artifact=convert_cell.commit_artifact,
    build_source=convert_cell.build_source, convert=convert_cell.convert, bench=bench_cell.bench)
