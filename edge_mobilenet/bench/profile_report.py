"""``edge-bench profile``: per-layer latency tables from the device (printed, profile.md, profile.json)."""

from __future__ import annotations

from pathlib import Path

from edge_mobilenet.contracts.records import RunRecord
from edge_mobilenet.fileio import write_json_atomic, write_text_atomic
from edge_mobilenet.runtimes.profiling import ops_text, slowest
from edge_mobilenet.text import markdown_table, text_table

HEADERS = ["", "ms", "share %", "ops / spread"]


def _rows(record: RunRecord, by: str, top: int | None) -> list[list]:
    rows = record.profile[f"{by}s"]
    rows = slowest(rows, top) if top else rows
    return [[r["layer"], round(r["ms"], 4), round(100 * (r["share"] or 0), 1),
             ops_text(r["ops"]) if "q1_ms" not in r else f"IQR {r['q1_ms']:.4f} to {r['q3_ms']:.4f} ms"]
            for r in rows]


def _totals(record: RunRecord) -> str:
    profile = record.profile
    if profile.get("noise_iqr_ms_median") is not None:
        return (f"{profile['method']}, {profile['runs']} interleaved rounds: the whole model's prefix "
                f"p50 {profile['total_ms']:.3f} ms vs the artifact's {profile['timed_p50_ms']:.3f} ms "
                f"(ratio {profile['profiled_vs_timed']:.3f}); rows sum to {profile['nodes_total_ms']:.3f} ms; "
                f"median IQR of a row {profile['noise_iqr_ms_median']:.4f} ms (the method's noise)"
                + ("; EMULATED device: the times are meaningless" if record.emulated else ""))
    text = (f"{profile['method']}, {profile['runs']} runs: profiled p50 {profile['total_ms']:.3f} ms "
            f"(kernels {profile['nodes_total_ms']:.3f} ms)")
    if profile.get("timed_p50_ms"):
        text += (f"; unprofiled p50 {profile['timed_p50_ms']:.3f} ms in the same process "
                 f"(profiled / unprofiled {profile['profiled_vs_timed']:.3f})")
    if record.emulated:
        text += "; EMULATED device: the op list is real, the times are meaningless"
    return text


def _problem(record: RunRecord) -> str | None:
    if not record.ok:
        return f"failed: {record.error}"
    if not record.profile or not record.profile.get("layers"):
        return "no profile: " + ((record.profile or {}).get("error") or "the runner returned none")
    return None


def profile_text(record: RunRecord, by: str, top: int | None) -> str:
    problem = _problem(record)
    if problem:
        return f"{record.artifact} on {record.device_name}: {problem}"
    return "\n".join([f"{record.artifact} on {record.device_name}: {_totals(record)}",
                      text_table([by] + HEADERS[1:], _rows(record, by, top), align="lrrl")])


def profile_markdown(records: list[RunRecord], by: str) -> str:
    parts = ["# Per-layer latency", ""]
    for record in records:
        parts += [f"## {record.artifact} on {record.device_name}", ""]
        problem = _problem(record)
        parts += [problem, ""] if problem else [_totals(record), "",
                                                markdown_table([by] + HEADERS[1:], _rows(record, by, None)), ""]
    return "\n".join(parts)


PREFIX_ROUNDS = 20


def _prefix_profile(artifact, device: str, connection: dict, overrides: dict, quick: bool, prefix_builder,
                    echo) -> RunRecord:
    """A TFLite artifact's per-block profile: its truncated prefixes (``prefix_builder``, from the
    convert stage) and a copy of it timed in interleaved rounds in one runner process, differenced."""
    import shutil
    import tempfile
    from dataclasses import replace

    from edge_mobilenet.bench.harness import run_bench_command
    from edge_mobilenet.runtimes.profiling import prefix_table

    runs = overrides.get("profile_runs") or 100
    timing = {**overrides, "profile_runs": None, "rounds": PREFIX_ROUNDS,
              "round_runs": max(5, runs // PREFIX_ROUNDS)}
    with tempfile.TemporaryDirectory(prefix="edge-prefixes-") as folder:
        echo(f"{artifact.path.name}: converting its prefixes (one per block) as it was converted", err=True)
        prefixes = prefix_builder(artifact.path, artifact.entry, Path(folder), log=lambda m: echo(m, err=True))
        whole = Path(folder) / f"whole{''.join(artifact.path.suffixes[-2:])}"
        shutil.copyfile(artifact.path, whole)
        records = run_bench_command([str(p) for _, p in prefixes] + [str(whole)], device, connection, timing,
                                    quick=quick, output=str(Path(folder) / "results.json"),
                                    preprocessing=(None, None, None), echo=echo)
    failed = next((r for r in records if not r.ok), None)
    whole_record = replace(records[-1], artifact=artifact.path.name, format=artifact.entry.format,
                           sha256=artifact.entry.sha256, source_sha256=artifact.entry.source_sha256)
    if failed is not None:
        return replace(whole_record, status="failed", error=f"prefix {failed.artifact}: {failed.error}")
    rounds = [r.latency["rounds"]["p50_ms"] for r in records]
    table = prefix_table([block for block, _ in prefixes], rounds[:-1], rounds[-1])
    return replace(whole_record, profile=table)


def _tflite_profiles(found, device, connection, overrides, quick, prefix_builder, echo) -> list[RunRecord]:
    records = []
    for artifact in found:
        if prefix_builder is None or not artifact.entry.source_file:
            why = "no float source recorded for it" if prefix_builder else "no prefix builder"
            records.append(RunRecord(status="ok", artifact=artifact.path.name, format=artifact.entry.format,
                                     runtime_kind="tflite", device_name=Path(device).stem,
                                     profile={"method": None, "error": f"no per-op timing from LiteRT's Python "
                                              f"API (tensorflow#59095), and {why}: the prefix method converts "
                                              "truncated copies of the float source"}))
            continue
        records.append(_prefix_profile(artifact, device, connection, overrides, quick, prefix_builder, echo))
    return records


def run_profile_command(paths: list[str], device: str, connection: dict, overrides: dict, *, by: str,
                        top: int | None, quick: bool, output: str | None, echo, prefix_builder=None) -> int:
    """Profile ``paths`` (ONNX: the runtime's own profiler over ``overrides['profile_runs']`` invokes;
    TFLite: truncated prefixes from ``prefix_builder``); print and write the tables; returns how many
    have no profile."""
    from edge_mobilenet.bench.artifacts import resolve_artifacts
    from edge_mobilenet.bench.harness import run_bench_command
    from edge_mobilenet.contracts.results import ResultsFile
    from edge_mobilenet.errors import EdgeError

    folder = Path(output or f"build/profiles/{Path(device).stem}")
    if folder.exists() and not folder.is_dir():
        raise EdgeError(f"--output {folder} is a file; give a folder")
    found = resolve_artifacts(paths)
    onnx = [str(a.path) for a in found if a.entry.runtime != "tflite"]
    records = run_bench_command(onnx, device, connection, overrides, quick=quick,
                                output=str(folder / "results.json"), preprocessing=(None, None, None),
                                echo=echo) if onnx else []
    tflite = _tflite_profiles([a for a in found if a.entry.runtime == "tflite"], device, connection, overrides,
                              quick, prefix_builder, echo)
    results = ResultsFile(folder / "results.json")
    for record in tflite:
        if record.profile is None or record.profile.get("method"):
            results.append(record)
    records += tflite
    for record in records:
        echo(profile_text(record, by, top))
    write_json_atomic(folder / "profile.json", {"schema": 1, "profiles": [
        {"artifact": r.artifact, "device_name": r.device_name, "emulated": r.emulated, "profile": r.profile}
        for r in records]})
    write_text_atomic(folder / "profile.md", profile_markdown(records, by))
    echo(f"profiles -> {folder / 'profile.md'}, {folder / 'profile.json'}", err=True)
    return sum(1 for r in records if _problem(r))
