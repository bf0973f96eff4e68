"""Benchmark results files ``{"schema", "runs": [run, ...]}``: the one writer (``ResultsFile``, one
atomic rewrite per finished artifact) and the one reader (``read_results``), both of ``RunRecord``s."""

from __future__ import annotations

from pathlib import Path

from edge_mobilenet.contracts.records import RunRecord, Where, check, get
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import read_json, write_json_atomic

SCHEMA = 1
HINT = "(write one with `edge-bench bench --output`)"


def read_results(path: str | Path) -> list[RunRecord]:
    """Every run of a results file, validated; EdgeError naming the file and the key otherwise."""
    path = Path(path)
    where = Where(path)
    data = read_json(path, "results file", HINT)
    if not isinstance(data, dict) or "runs" not in data:
        raise where.fail("not an edge-bench results file (expected an object with a 'runs' list)")
    schema = get(data, "schema", where, (int,), SCHEMA)
    if schema != SCHEMA:
        raise (where / "schema").fail(f"is {schema}; this edge-bench reads schema {SCHEMA}")
    runs = check(data["runs"], where / "runs", (list,))
    return [RunRecord.from_json(run, where / "runs" / i) for i, run in enumerate(runs)]


class ResultsFile:
    """An output results file: existing runs are kept, each new run is appended and written at once.

    Refused before any device time: a folder, or a file that is not a results file (it would be lost).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise EdgeError(f"{self.path}: --output is a folder; give a results .json file")
        self.runs: list[RunRecord] = read_results(self.path) if self.path.exists() else []

    def append(self, run: RunRecord) -> None:
        self.runs.append(run)
        write_json_atomic(self.path, {"schema": SCHEMA, "runs": [r.to_json() for r in self.runs]})
