"""``edge-bench profile``: per-layer latency tables from the device (printed, profile.md, profile.json)."""

from __future__ import annotations

from pathlib import Path

from edge_mobilenet.contracts.records import RunRecord
from edge_mobilenet.fileio import write_json_atomic, write_text_atomic
from edge_mobilenet.runtimes.profiling import ops_text, slowest
from edge_mobilenet.text import markdown_table, text_table

HEADERS = ["", "ms", "share %", "ops"]


def _rows(record: RunRecord, by: str, top: int | None) -> list[list]:
    rows = record.profile[f"{by}s"]
    rows = slowest(rows, top) if top else rows
    return [[r["layer"], round(r["ms"], 4), round(100 * (r["share"] or 0), 1), ops_text(r["ops"])] for r in rows]


def _totals(record: RunRecord) -> str:
    profile = record.profile
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


def run_profile_command(paths: list[str], device: str, connection: dict, overrides: dict, *, by: str,
                        top: int | None, quick: bool, output: str | None, echo) -> int:
    """Bench ``paths`` with a profile (``overrides['profile_runs']`` invokes); print and write the tables;
    returns how many have no profile."""
    from edge_mobilenet.bench.harness import run_bench_command

    folder = Path(output or f"build/profiles/{Path(device).stem}")
    if folder.exists() and not folder.is_dir():
        from edge_mobilenet.errors import EdgeError

        raise EdgeError(f"--output {folder} is a file; give a folder")
    records = run_bench_command(paths, device, connection, overrides, quick=quick,
                                output=str(folder / "results.json"), preprocessing=(None, None, None), echo=echo)
    for record in records:
        echo(profile_text(record, by, top))
    write_json_atomic(folder / "profile.json", {"schema": 1, "profiles": [
        {"artifact": r.artifact, "device_name": r.device_name, "emulated": r.emulated, "profile": r.profile}
        for r in records]})
    write_text_atomic(folder / "profile.md", profile_markdown(records, by))
    echo(f"profiles -> {folder / 'profile.md'}, {folder / 'profile.json'}", err=True)
    return sum(1 for r in records if _problem(r))
