"""The typed records and their readers: files written before the records existed still load (fixtures
in tests/fixtures/before_records, written by commit 765e2fa), records round-trip, bad files give one
line naming the file and the key, and the package floors hold (no sibling imports)."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from edge_mobilenet.contracts.manifest import read_manifest
from edge_mobilenet.contracts.records import ArtifactEntry, RunRecord, Where
from edge_mobilenet.contracts.results import ResultsFile, read_results
from edge_mobilenet.errors import EdgeError

FIXTURES = Path(__file__).parent / "fixtures" / "before_records"
PACKAGE = Path(__file__).resolve().parents[1] / "edge_mobilenet"


@pytest.fixture
def old_folder(tmp_path):
    folder = tmp_path / "artifacts"
    folder.mkdir()
    for name in ("manifest.json", "mobilenet_v1_0.25_32_random.int8.tflite"):
        shutil.copy(FIXTURES / name, folder / name)
    return folder


def test_schema1_manifest_migrates_on_read(old_folder):
    manifest = read_manifest(old_folder)
    assert manifest.schema == 1
    entry = manifest.entries[0]
    assert entry.task == "classification" and entry.format == "int8" and entry.runtime == "tflite"
    assert entry.input.dtype == "int8" and entry.input.scale > 0 and entry.input.shape == (1, 32, 32, 3)
    assert len(entry.outputs) == 1 and entry.output.shape == (1, 10) and entry.num_classes == 10
    assert entry.preprocessing["name"] == "symmetric" and entry.facts["recipe"] == {"io": "int8"}
    assert ArtifactEntry.from_json(entry.to_json(), Where("x")) == entry


def test_schema1_validation_metrics_are_keyed_by_name():
    manifest = read_manifest(FIXTURES / "manifest_trained.json")
    fp32 = manifest.entry("mobilenet_v1_0.25_32.fp32.tflite")
    assert fp32.validation.metrics == {"top1": 0.9276} and fp32.validation.float_metrics == {"top1": 0.9276}
    assert fp32.validation.agreement_with_float == 1.0 and fp32.trained_weights
    onnx = manifest.entry("mobilenet_v1_0.25_32.int8.onnx")
    assert onnx.runtime == "onnx" and onnx.baseline == "onnx" and "top1" in onnx.validation.metrics


def test_old_manifest_and_results_work_in_bench_report_and_compare(old_folder, tmp_path, run_cli):
    results = tmp_path / "results.json"
    shutil.copy(FIXTURES / "results.json", results)
    assert len(read_results(results)) == 1
    bench = run_cli("bench", old_folder, "--device", "local", "--quick", "--output", results)
    assert bench.returncode == 0, bench.stderr
    runs = read_results(results)
    assert [r.artifact for r in runs] == ["mobilenet_v1_0.25_32_random.int8.tflite"] * 2 and runs[1].ok
    report = run_cli("report", results, "--output", tmp_path / "rep")
    assert report.returncode == 0, report.stderr
    assert "mobilenet_v1_0.25_32_random" in (tmp_path / "rep.md").read_text()
    compare = run_cli("compare", FIXTURES / "results.json", results)
    assert compare.returncode == 0 and "1 matched" in compare.stdout


def test_run_record_round_trip():
    run = read_results(FIXTURES / "results.json")[0]
    assert RunRecord.from_json(run.to_json(), Where("x")) == run
    assert run.latency_ms("p50_ms") > 0 and run.threads == 1 and run.metric("top1") is None


def _manifest_with(folder: Path, change) -> Path:
    data = json.loads((FIXTURES / "manifest.json").read_text())
    change(data)
    (folder / "manifest.json").write_text(json.dumps(data) if not isinstance(data, str) else data)
    return folder


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(artifacts="x"), "artifacts must be a list, not a string"),
    (lambda d: d.update(artifacts=[]), "lists no artifacts"),
    (lambda d: d["artifacts"][0].update(file=3), "artifacts[0].file must be a string, not an integer 3"),
    (lambda d: d["artifacts"][0].update(file="../../../../etc/passwd"), "is not a plain file name"),
    (lambda d: d["artifacts"][0].update(file="/etc/passwd"), "is not a plain file name"),
    (lambda d: d["artifacts"][0]["input"].update(shape="1x32"), "artifacts[0].input.shape must be a list"),
    (lambda d: d["artifacts"][0].pop("sha256"), "artifacts[0].sha256 is missing"),
    (lambda d: d["artifacts"][0].update(sha256="0" * 64), "its sha256 differs from"),
    (lambda d: d.update(schema=99), "schema is 99; this edge-bench reads schemas 1, 2"),
])
def test_bad_manifests_are_refused_before_any_device_time(old_folder, change, message, run_cli, tmp_path):
    _manifest_with(old_folder, change)
    result = run_cli("bench", old_folder, "--device", "local", "--quick", "--output", tmp_path / "r.json")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "r.json").exists()


def test_symlink_out_of_the_folder_is_refused(old_folder, tmp_path, run_cli):
    outside = tmp_path / "outside.tflite"
    shutil.move(old_folder / "mobilenet_v1_0.25_32_random.int8.tflite", outside)
    (old_folder / "mobilenet_v1_0.25_32_random.int8.tflite").symlink_to(outside)
    result = run_cli("bench", old_folder, "--device", "local", "--quick", "--output", tmp_path / "r.json")
    assert result.returncode == 2 and "is a symlink out of" in result.stderr


@pytest.mark.parametrize("content,message", [
    ("", "the manifest is empty"), ("[]", "must be an object, not a list"), ("{", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_unreadable_manifests(tmp_path, content, message):
    path = tmp_path / "manifest.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(EdgeError, match=message):
        read_manifest(path)


def test_results_output_that_is_not_a_results_file_is_refused(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(EdgeError, match="is a folder"):
        ResultsFile(folder)
    other = tmp_path / "package.json"
    other.write_text('{"name": "x"}')
    with pytest.raises(EdgeError, match="not an edge-bench results file"):
        ResultsFile(other)


# Floors (../shared/DESIGN.md): ground -> contracts -> runtimes -> models, data -> train -> the stages -> cli.
SIBLINGS = {"convert", "bench", "sweep", "report"}
BELOW_STAGES = {"contracts", "runtimes", "data", "models"}
NO_TENSORFLOW_AT_IMPORT = {"contracts", "runtimes", "data", "report", "bench"}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((a.name, node) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node


def test_no_package_imports_a_sibling_or_a_floor_above_it():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        package = parts[0] if len(parts) > 1 else path.stem
        for module, node in _imports(path):
            target = module.split(".")
            if target[0] != "edge_mobilenet" or len(target) < 2:
                continue
            if package in SIBLINGS and target[1] in SIBLINGS and target[1] != package:
                problems.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {module}")
            if package in BELOW_STAGES and target[1] in SIBLINGS | {"train", "cli"}:
                problems.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {module} (above it)")
            if package in {"contracts", "runtimes"} and target[1] in {"models", "data"}:
                problems.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {module} (above it)")
    assert not problems, "\n".join(problems)


def test_lower_floors_import_no_tensorflow_at_module_level():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if parts[0] not in NO_TENSORFLOW_AT_IMPORT:
            continue
        for node in ast.parse(path.read_text()).body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            problems += [f"{path.relative_to(PACKAGE)} imports {n}" for n in names
                         if n.split(".")[0] in ("tensorflow", "keras", "tf2onnx")]
    assert not problems, "\n".join(problems)


def test_device_runner_stays_self_contained():
    runner = PACKAGE / "runtimes" / "device_runner.py"
    modules = {m.split(".")[0] for m, _ in _imports(runner)}
    assert "edge_mobilenet" not in modules and not modules & {"tensorflow", "keras", "onnx"}
