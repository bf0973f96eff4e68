"""The report side of a sweep: Pareto fronts, fastest within an accuracy loss, thread advice, and the HTML
page in a real headless Chromium (skipped without it unless EDGE_REQUIRE_BROWSER=1)."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edge_mobilenet.cli import _Group
from edge_mobilenet.contracts.formats import FORMATS
from edge_mobilenet.contracts.records import RunRecord
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.report import html as report_html
from edge_mobilenet.report import pareto
from edge_mobilenet.report import results as res
from edge_mobilenet.report.commands import report as report_command

SUFFIXES = {"fp32": ".fp32.tflite", "int8": ".int8.tflite", "onnx": ".onnx", "onnx-int8": ".int8.onnx"}
EVIL = "evil_</script><b>x_&\"'"
MODELS = {"A": ("mobilenet_v1_0.25_32", {"model": "mobilenet_v1", "alpha": 0.25, "size": 32, "classes": 10}),
          "B": ("mobilenet_v2_0.35_32", None), "C": (EVIL, None)}  # A ran in a sweep; B and C by bench
CHROMIUM = os.environ.get("EDGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# (model, format, threads, p50 ms, top-1 or None, size bytes); p50 None: the run failed.
PI4 = [("A", "int8", 2, 9.0, 0.89, 300_000),  # an earlier sweep, superseded by the later A int8 2t
       ("A", "fp32", 1, 10.0, 0.900, 900_000), ("A", "fp32", 2, 6.0, 0.900, 900_000),
       ("A", "fp32", 3, 7.0, 0.900, 900_000),  # 3 threads slower than 2
       ("A", "int8", 1, 4.0, 0.890, 300_000), ("A", "int8", 2, 2.5, 0.890, 300_000),
       ("A", "int8", 3, 2.0, 0.890, 300_000),
       ("A", "onnx", 2, 6.0, 0.900, 950_000),  # the same point as A fp32 2t: a tie, both on the front
       ("A", "onnx-int8", 2, 3.0, None, 320_000),  # random weights: no accuracy
       ("B", "fp32", 2, 12.0, 0.905, 1_600_000), ("B", "int8", 2, 5.0, 0.895, 500_000),
       ("B", "onnx-int8", 2, 4.5, 0.880, 550_000),  # dominated by A int8 3t
       ("B", "onnx", 2, None, None, 1_700_000)]  # failed
LAPTOP = [("A", "fp32", 1, 3.0, 0.90, 900_000), ("A", "int8", 1, 1.0, 0.89, 300_000),
          ("C", "int8", 1, 1.5, 0.91, 310_000)]
LATEST_RUNS = len(PI4) - 1 + len(LAPTOP)


def _run(device, model, fmt, threads, p50_ms, top1, size_bytes, minute=0):
    base, sweep = MODELS[model]
    runtime_kind = "onnx" if fmt.startswith("onnx") else "tflite"
    ok = p50_ms is not None
    extra = {}
    if sweep:
        cell = f"mobilenet_v1 a0.25 s32 c10 / {fmt} / {device} / {threads}t"
        extra = {"sweep": {"sweep": "grid", "cell": cell, "key": f"{minute:04x}", **sweep, "threads": threads,
                           "device": device}}
    return RunRecord(
        status="ok" if ok else "failed", artifact=base + SUFFIXES[fmt], format=fmt, runtime_kind=runtime_kind,
        device_name=device, baseline_format="onnx" if runtime_kind == "onnx" else "fp32",
        timestamp_utc=f"2026-11-22T10:{minute:02d}:00+00:00", source_sha256=model.lower() * 64,
        sha256=f"{model}{fmt}".ljust(64, "0"), size_bytes=size_bytes, params=470_000, macs=14_000_000,
        transport="ssh" if device == "pi4" else "local",
        device={"machine": "aarch64" if device == "pi4" else "x86_64", "cores": 4, "governors": ["performance"]},
        runtime={"name": "onnxruntime" if runtime_kind == "onnx" else "litert", "version": "1.0"} if ok else None,
        latency={"p50_ms": p50_ms, "p90_ms": p50_ms * 1.2, "count": 200} if ok else None,
        accuracy=None if top1 is None else {"images": 500, "top1": top1, "top5": 0.99},
        settings={"threads": threads, "eval_dir": "eval"}, valid=ok, error=None if ok else "load_failed: boom",
        commit={"sha": "c" * 40, "dirty": False}, extra=extra)


def _runs() -> list[RunRecord]:
    table = [("pi4", *row) for row in PI4] + [("laptop", *row) for row in LAPTOP]
    return [_run(*row, minute=i) for i, row in enumerate(table)]


def _write(path: Path, runs: list[RunRecord]) -> Path:
    path.write_text(json.dumps({"schema": 1, "runs": [r.to_json() for r in runs]}))
    return path


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("sweep") / "sweep.json", _runs())


@pytest.fixture(scope="module")
def summaries(results):
    return pareto.summarise(res.analyse(res.load_results(results)))


def _labels(rows) -> list[str]:
    return [pareto.config_label(r.run) for r in rows]


def A(fmt: str, threads: int) -> str:
    return f"mobilenet_v1 a0.25 s32 c10 {fmt} {threads}t"


def B(fmt: str, threads: int) -> str:
    return f"mobilenet_v2_0.35_32 {fmt} {threads}t"


def test_pareto_front_ties_and_dominated_points():
    points = [(2.0, 90.0), (1.0, 90.0), (1.0, 85.0), (1.0, 90.0), (3.0, 95.0), (2.5, 95.0), (2.5, 95.0),
              (4.0, None), (None, 99.0), (0.5, 80.0), (2.5, 94.0)]
    front = pareto.pareto_front(points, lambda p: p[0], lambda p: p[1])
    assert front == [(0.5, 80.0), (1.0, 90.0), (1.0, 90.0), (2.5, 95.0), (2.5, 95.0)]
    assert front[1] is points[1] and front[2] is points[3]  # equal points keep the input order
    assert pareto.pareto_front([], lambda p: p, lambda p: p) == []


def test_fronts_per_device(summaries):
    assert list(summaries) == ["pi4", "laptop"]
    pi4 = summaries["pi4"]
    assert len(pi4.runs) == 11 and pi4.without_accuracy == 1  # latest ok runs; the failed one is out
    assert _labels(pi4.latency_front) == [A("int8", 3), B("int8", 2), A("fp32", 2), A("onnx", 2), B("fp32", 2)]
    # one run per artifact (its fastest thread count); A onnx (950 kB, 90 %) loses to A fp32 (900 kB, 90 %)
    assert _labels(pi4.size_front) == [A("int8", 3), B("int8", 2), A("fp32", 2), B("fp32", 2)]
    assert [r.run.format for r in summaries["laptop"].latency_front] == ["int8", "int8"]
    assert [r.model for r in summaries["laptop"].latency_front] == ["mobilenet_v1_0.25_32", EVIL]


@pytest.mark.parametrize("loss_pt,fastest", [(1.0, B("int8", 2)),  # 89.5 is exactly 1 pt below 90.5
                                             (0.5, A("fp32", 2)),  # ties with A onnx 2t: input order
                                             (2.0, A("int8", 3)), (0.0, B("fp32", 2))])
def test_fastest_within_accuracy_loss(results, loss_pt, fastest):
    rows = pareto.candidates(res.analyse(res.load_results(results)))
    within = pareto.fastest_within([r for r in rows if r.run.device_name == "pi4"], loss_pt)
    assert pareto.config_label(within.best.run) == B("fp32", 2)
    assert pareto.config_label(within.fastest.run) == fastest
    if loss_pt == 1.0:
        assert str(within) == (f"{B('int8', 2)} (5 ms, 89.50 %): 2.40× faster than the most accurate run, "
                               f"{B('fp32', 2)} (12 ms, 90.50 %), -1.00 pt")
    if loss_pt == 0.0:
        assert "the most accurate run is also the fastest within 0 pt" in str(within)
    assert pareto.fastest_within([r for r in rows if res.top1(r.run) is None]) is None


def test_thread_recommendation_and_slower_flag(summaries):
    advice = {a.format: a for a in summaries["pi4"].threads}
    assert set(advice) == {"fp32", "int8"}  # the other artifacts ran with one thread count
    fp32, int8 = advice["fp32"], advice["int8"]
    assert fp32.p50_ms_by_threads == {1: 10.0, 2: 6.0, 3: 7.0} and fp32.best_threads == 2
    assert fp32.slower == (pareto.Slowdown(3, 2, pytest.approx(100 / 6)),)
    assert str(fp32) == "2 threads: 3 is 17% slower"
    assert int8.p50_ms_by_threads == {1: 4.0, 2: 2.5, 3: 2.0}  # the superseded 9 ms run is not used
    assert str(int8) == "3 threads" and not int8.slower
    assert summaries["laptop"].threads == ()


def test_slowdown_against_fewer_threads_than_the_best():
    runs = [_run("pi4", "A", "fp32", t, p50, 0.9, 900_000, minute=t) for t, p50 in
            ((1, 10.0), (2, 6.0), (3, 8.0), (4, 5.0), (5, 5.02))]
    advice = pareto.thread_advice(pareto.candidates(res.analyse(runs)))
    assert [str(a) for a in advice] == ["4 threads: 3 is 33% slower than 2"]  # 5: +0.4 % is noise


@pytest.mark.parametrize("text,value", [("1pt", 1.0), ("0.5pt", 0.5), (" 2 pt ", 2.0), ("0pt", 0.0),
                                        (".25pt", 0.25)])
def test_accuracy_loss_text(text, value):
    assert pareto.parse_accuracy_loss(text) == value


@pytest.mark.parametrize("text", ["1", "1%", "-1pt", "one pt", "", "pt", "101pt", "1pt2", "1e3pt"])
def test_bad_accuracy_loss_text(text):
    with pytest.raises(EdgeError, match=r"^--accuracy-loss .*: expected top-1 percentage points"):
        pareto.parse_accuracy_loss(text)


@pytest.fixture
def cli_group():
    @click.group(cls=_Group)
    def group():
        pass

    group.add_command(report_command)
    return group


def test_report_command_writes_html_pareto_png_and_sections(results, tmp_path, cli_group):
    prefix = tmp_path / "out" / "sweep"
    outcome = CliRunner().invoke(cli_group, ["report", str(results), "--output", str(prefix),
                                             "--accuracy-loss", "0.5pt"])
    assert outcome.exit_code == 0, outcome.output
    names = ["sweep.md", "sweep.csv", "sweep_latency_vs_accuracy.png", "sweep_formats.png", "sweep_pareto.png",
             "sweep.html"]
    assert outcome.output.strip().endswith("wrote " + ", ".join(str(prefix.parent / n) for n in names))
    assert (prefix.parent / "sweep_pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (prefix.parent / "sweep.md").read_text()
    pi4, laptop = text.split("\n## pi4")[1].split("\n## laptop")
    for section in (pi4, laptop):
        assert "### Pareto front" in section and "### Fastest within 0.5 pt" in section
    assert "1 run(s) without top-1 (random weights or no labels) are left out" in pi4
    assert f"| 2 | 89.00 | 293.0 | {A('int8', 3)} | yes |" in pi4
    assert f"| 6 | 90.00 | 927.7 | {A('onnx', 2)} | no |" in pi4
    assert f"{A('fp32', 2)} (6 ms, 90.00 %): 2.00× faster than the most accurate run" in pi4
    assert "| mobilenet_v1_0.25_32 | fp32 | 3 | litert 1.0 | 878.9 |" in pi4  # threads differ: a column
    assert "| mobilenet_v1_0.25_32 | fp32 | litert 1.0 | 878.9 |" in laptop  # one thread count: none
    assert "### Threads" in pi4 and "### Threads" not in laptop
    assert f"| 2 threads: 3 is 17% slower | mobilenet_v1 a0.25 s32 c10 fp32 | 1: 10, 2: 6, 3: 7 |" in pi4
    assert "| 3 threads | mobilenet_v1 a0.25 s32 c10 int8 | 1: 4, 2: 2.5, 3: 2 |" in pi4
    html_text = (prefix.parent / "sweep.html").read_text()
    assert "</script><b>x" not in html_text
    assert " src=" not in html_text and "http://" not in html_text.replace('"http://www.w3.org/2000/svg"', "")


def test_bad_accuracy_loss_is_one_line(results, cli_group):
    outcome = CliRunner().invoke(cli_group, ["report", str(results), "--accuracy-loss", "1%"])
    assert outcome.exit_code == 2 and outcome.output.count("\n") == 1
    assert outcome.output.startswith("edge-bench: error: --accuracy-loss '1%': expected top-1 percentage points")


def _no_accuracy(tmp_path) -> Path:
    runs = [_run("board", "B", fmt, 1, p50, None, size) for fmt, p50, size in
            (("fp32", 10.0, 1_600_000), ("int8", 4.0, 500_000), ("onnx-int8", 6.0, 400_000),
             ("onnx", 11.0, 1_700_000))]
    return _write(tmp_path / "random.json", runs)


def test_without_accuracy_the_front_is_size_vs_p50(tmp_path):
    from edge_mobilenet.report.markdown import write_full_report

    files = write_full_report(_no_accuracy(tmp_path), tmp_path / "random")
    text = files[0].read_text()
    assert "No run on this device has top-1 (random weights or no labels): the front is size vs p50" in text
    assert "| 4 | n/a | 488.3 | mobilenet_v2_0.35_32 int8 1t |" in text
    assert "| 6 | n/a | 390.6 | mobilenet_v2_0.35_32 onnx-int8 1t |" in text and "| 10 | n/a" not in text
    assert "n/a: no run on this device has top-1" in text
    assert [f.name for f in files[-2:]] == ["random_pareto.png", "random.html"]
    page = files[-1].read_text()  # the page says per integer artifact whether int8 pays here
    assert "<li>mobilenet_v2_0.35_32 int8: 0.40× the float time (timed in separate blocks): int8 pays; it is " \
           "the fastest format here</li>" in page
    assert "onnx-int8: 0.55× the float time (timed in separate blocks): int8 pays; fastest here: int8 (4 ms)" in page


def test_page_when_every_run_failed(tmp_path):
    runs = [_run("pi4", "A", "fp32", 1, None, None, 900_000), _run("pi4", "A", "int8", 1, None, None, 300_000)]
    page = report_html.page_html("failed.json", res.analyse(runs))
    assert "nothing to chart" in page and page.count(">FAILED: load_failed: boom</td>") == 2
    assert '"charts": []' in page


def test_every_format_colour_maps_to_hex():
    for fmt in FORMATS:
        assert report_html.format_colour(fmt).startswith("#") and len(report_html.format_colour(fmt)) == 7
    assert report_html.colour_hex("tab:red") == "#d62728" and report_html.colour_hex("#123456") == "#123456"


def test_embedded_json_cannot_close_its_script():
    text = report_html.embedded_json({"a": "</script><!-- & \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- & \u2028"}


# --- the page in a real browser ------------------------------------------------------------------------

def _missing(reason: str):
    if os.environ.get("EDGE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (EDGE_REQUIRE_BROWSER=1 requires the browser test)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        _missing(f"the playwright package is not installed: {error}")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _missing(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set EDGE_CHROMIUM)")
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as error:  # playwright raises its own Error type for a browser that won't start
            _missing(f"Chromium at {CHROMIUM} did not start: {str(error).splitlines()[0]}")
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def page_file(results) -> Path:
    from edge_mobilenet.report.html import write_html

    path = results.with_suffix(".html")
    return write_html(path, results.name, res.analyse(res.load_results(results)))


def _open(browser, path: Path, javascript: bool = True):
    context = browser.new_context(java_script_enabled=javascript, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    requests, errors = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    return context, page, requests, errors


def _column(name: str) -> int:
    return [c.key for c in report_html.COLUMNS].index(name)


def _cells(page, key: str) -> list[str]:
    return page.eval_on_selector_all(
        "#runs tbody tr", f"rows => rows.map(r => r.cells[{_column(key)}].getAttribute('data-v'))")


def test_page_table_sorts_by_p50(browser, page_file):
    context, page, requests, errors = _open(browser, page_file)
    assert page.locator("#runs tbody tr").count() == LATEST_RUNS
    before = _cells(page, "artifact")
    header = page.locator("#runs thead th", has_text="p50 ms")
    header.click()
    p50 = _cells(page, "p50_ms")
    numbers = [float(v) for v in p50 if v]
    assert numbers == sorted(numbers) and p50[-1] == "" and len(numbers) == LATEST_RUNS - 1  # n/a last
    assert numbers[:4] == [1.0, 1.5, 2.0, 2.5] and numbers[-1] == 12.0
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    p50 = _cells(page, "p50_ms")
    assert [float(v) for v in p50 if v] == sorted(numbers, reverse=True) and p50[-1] == ""
    page.locator("#runs thead th", has_text="artifact").click()
    assert _cells(page, "artifact") == sorted(before)
    assert requests == [page_file.as_uri()] and errors == []
    context.close()


def test_page_chart_points_front_and_pixels(browser, page_file):
    from PIL import Image

    context, page, requests, errors = _open(browser, page_file)
    svg = page.locator("#chart-area svg")
    assert page.locator("#chart-area svg circle.point").count() == 10  # pi4: 11 runs, 1 without accuracy
    assert page.get_attribute("#chart-area svg path.front", "d").count("L") == 4  # 5 points on the front
    assert page.locator("#chart-area svg circle.on-front").count() == 5
    fills = set(page.eval_on_selector_all("#chart-area svg circle.point",
                                          "c => c.map(e => e.getAttribute('fill'))"))
    assert fills == {report_html.format_colour(f) for f in ("fp32", "int8", "onnx", "onnx-int8")}
    assert "1 run(s) without top-1" in page.text_content("#chart-note")
    image = Image.open(io.BytesIO(svg.screenshot())).convert("RGB")
    pixels = list(image.getdata())
    inked = sum(1 for pixel in pixels if sum(pixel) < 3 * 235)
    coloured = sum(1 for pixel in pixels if max(pixel) - min(pixel) > 60)  # the points, not grey axes
    assert inked > 0.01 * len(pixels) and coloured > 300, f"chart looks blank: {inked} inked, {coloured} coloured"
    page.select_option("#device", label="laptop")
    assert page.locator("#chart-area svg circle.point").count() == 3
    assert page.get_attribute("#chart-area svg path.front", "d").count("L") == 1
    titles = page.eval_on_selector_all("#chart-area svg circle title", "t => t.map(e => e.textContent)")
    assert any(EVIL in t for t in titles)
    assert requests == [page_file.as_uri()] and errors == []
    context.close()


def test_page_shows_markup_in_names_as_text(browser, page_file):
    context, page, requests, errors = _open(browser, page_file)
    artifacts = page.eval_on_selector_all(
        "#runs tbody tr", f"r => r.map(e => e.cells[{_column('artifact')}].textContent)")
    assert EVIL + ".int8.tflite" in artifacts
    assert page.locator("#runs b").count() == 0
    assert set(page.eval_on_selector_all("b", "b => b.map(e => e.textContent)")) == {"pi4", "laptop"}
    assert page.locator("#chart-area svg circle.point").count() == 10  # the JSON still parsed
    assert errors == []
    context.close()


def test_page_without_javascript_shows_the_table(browser, page_file):
    context, page, requests, errors = _open(browser, page_file, javascript=False)
    assert page.locator("#runs tbody tr").count() == LATEST_RUNS
    assert not page.locator("#chart").is_visible() and page.locator("noscript").count() == 1
    front_rows = page.locator("#runs tbody tr.front").count()
    assert front_rows == 7  # pi4: 5, laptop: 2
    assert requests == [page_file.as_uri()]
    context.close()


def test_page_without_accuracy_charts_size(browser, tmp_path):
    from edge_mobilenet.report.html import write_html

    rows = res.analyse(res.load_results(_no_accuracy(tmp_path)))
    path = write_html(tmp_path / "random.html", "random.json", rows)
    context, page, requests, errors = _open(browser, path)
    assert page.locator("#chart-area svg circle.point").count() == 4
    assert page.get_attribute("#chart-area svg path.front", "d").count("L") == 1  # int8 4 ms, onnx-int8 6 ms
    assert "size vs p50 instead" in page.text_content("#chart-note")
    assert "artifact size (KiB)" in page.text_content("#chart-area svg")
    assert not page.locator("#device-choice").is_visible()  # one device: no selector
    assert requests == [path.as_uri()] and errors == []
    context.close()
