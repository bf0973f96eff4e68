"""Run a sweep's cells on Ray: sources and conversions are CPU tasks, each device a custom resource of
capacity 1 (``device:NAME``), so a device runs one benchmark at a time while different devices run at once.

The driver is an event loop over the tasks in flight: a finished source starts its conversions, a
finished conversion its bench cells; every result is written by the driver as it arrives (see
:mod:`edge_mobilenet.sweep.store`). Ray retries a task whose worker died; a task that fails is recorded
as failed runs of the cells that needed it, and the sweep goes on.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from edge_mobilenet.contracts.formats import FORMATS
from edge_mobilenet.contracts.records import RunRecord, Where
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.sweep.plan import BenchCell, Plan
from edge_mobilenet.sweep.spec import Variant
from edge_mobilenet.sweep.store import SweepStore

TASK_RETRIES = 3  # Ray re-runs a task whose worker process died this many times


def start_ray(address: str | None, workers: int, devices) -> dict:
    """Join ``address`` or start a local instance with ``workers`` CPUs and one resource per device;
    the cluster's resources. A device no node advertises is an error before any task runs."""
    try:
        import ray
    except ImportError:
        raise EdgeError("edge-bench sweep needs Ray: pip install 'edge-mobilenet[sweep]'") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                   configure_logging=True)
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(num_cpus=workers, resources={d.resource: 1 for d in devices}, **options)
    resources = ray.cluster_resources()
    missing = [d.resource for d in devices if resources.get(d.resource, 0) < 1]
    if missing:
        ray.shutdown()
        raise EdgeError(f"no node of the Ray cluster at {address} advertises {missing[0]} (start the node that "
                        f"reaches it with: ray start --address {address} --resources '{{\"{missing[0]}\": 1}}')")
    return resources


def _reason(error: BaseException) -> str:
    """One line for a task's failure: the stage's own message when it raised an EdgeError."""
    cause = getattr(error, "cause", None) or error
    text = str(cause) if isinstance(cause, EdgeError) else f"{type(cause).__name__}: {cause}"
    lines = [l for l in text.splitlines() if l.strip()]
    return (lines[-1] if not isinstance(cause, EdgeError) and lines else (lines[0] if lines else "failed"))[:300]


class Driver:
    def __init__(self, plan: Plan, store: SweepStore, stages, progress, log, local_cpus: float):
        import ray

        self.ray, self.plan, self.store, self.stages = ray, plan, store, stages
        self.sweep = plan.sweep
        self.progress, self.log = progress, log
        self.local_cpus = local_cpus
        self.pending: dict = {}  # ObjectRef -> (kind, payload)
        self.failed = 0
        self.converting = 0
        self.started = time.perf_counter()
        remote = ray.remote(max_retries=TASK_RETRIES)
        self.build_source = remote(stages.build_source).options(num_cpus=1)
        self.convert = remote(stages.convert).options(num_cpus=1)
        self.bench = remote(stages.bench)

    def todo(self, variant: Variant, fmt: str | None = None) -> list[BenchCell]:
        return [c for c in self.plan.cells if c.variant == variant and (fmt is None or c.fmt == fmt)
                and self.store.done(c.key) is None]

    def run(self) -> int:
        for variant in self.sweep.variants:
            if not self.todo(variant):
                continue
            path = Path(variant.source) if variant.is_file else self.store.source(self.plan.source_keys[variant])
            if path is not None:
                self.source_ready(variant, path)
            else:
                ref = self.build_source.remote(variant.row(), self.sweep.quantize_settings)
                self.pending[ref] = ("source", variant)
        while self.pending:
            ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=1.0)
            for ref in ready:
                self.finished(ref)
            self._postfix()
        return self.failed

    def source_ready(self, variant: Variant, path: Path) -> None:
        source = self.ray.put(self.stages.file_source(str(path)))
        settings, calibration = self.sweep.quantize_settings, self.plan.calibration_sha
        for fmt in variant.formats:
            if not self.todo(variant, fmt):
                continue
            key = self.stages.artifact_key(path, fmt, settings, calibration)
            name = self.stages.artifact_name(path.name, fmt)
            entry = self.stages.cached_artifact(self.store.artifacts, name, key)
            if entry is not None:
                self.artifact_ready(variant, fmt, entry)
                continue
            ref = self.convert.remote(source, fmt, settings, calibration if FORMATS[fmt].calibrated else None)
            self.pending[ref] = ("convert", (variant, fmt, path))
            self.converting += 1

    def artifact_ready(self, variant: Variant, fmt: str, entry: dict) -> None:
        data = self.ray.put((self.store.artifacts / entry["file"]).read_bytes())
        for cell in self.todo(variant, fmt):
            cpus = self.local_cpus if cell.device.transport == "local" else 0
            task = self.bench.options(num_cpus=cpus, resources={cell.device.resource: 1})
            ref = task.remote(entry, data, cell.device.spec, cell.threads, self.sweep.bench_for(cell.device),
                              self.sweep.attempts, self.sweep.backoff_seconds)
            self.pending[ref] = ("bench", cell)

    def finished(self, ref) -> None:
        kind, payload = self.pending.pop(ref)
        try:
            result = self.ray.get(ref)
        except Exception as error:  # the task raised (or its worker died more than TASK_RETRIES times)
            self.converting -= kind == "convert"
            return self.task_failed(kind, payload, _reason(error))
        if kind == "source":
            path = self.store.save_source(self.plan.source_keys[payload], result)
            self.log(f"  source {payload.label}: {path.name}")
            self.source_ready(payload, path)
        elif kind == "convert":
            self.converting -= 1
            variant, fmt, path = payload
            entry = self.stages.commit_artifact(self.store.artifacts, result, path)
            self.log(f"  converted {entry['file']} ({entry['size_bytes'] / 1024:.1f} KiB)")
            self.artifact_ready(variant, fmt, entry)
        else:
            self.cell_done(payload, RunRecord.from_json(result["run"], Where("bench cell")), result["attempts"])

    def task_failed(self, kind: str, payload, reason: str) -> None:
        if kind == "bench":
            return self.cell_done(payload, None, 0, f"bench: {reason}")
        variant, fmt = (payload, None) if kind == "source" else payload[:2]
        self.log(f"  {kind} of {variant.label}{' ' + fmt if fmt else ''} FAILED: {reason}")
        for cell in self.todo(variant, fmt):
            self.cell_done(cell, None, 0, f"{kind}: {reason}")

    def cell_done(self, cell: BenchCell, run: RunRecord | None, attempts: int, error: str | None = None) -> None:
        if run is None:
            fmt = FORMATS[cell.fmt]
            run = RunRecord(status="failed", artifact=cell.label, format=cell.fmt, runtime_kind=fmt.runtime,
                            device_name=cell.device.name, baseline_format=fmt.baseline, error=error,
                            timestamp_utc=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                            settings={"threads": cell.threads})
        run = replace(run, extra={**run.extra, "sweep": cell.info(self.sweep, attempts)})
        self.store.record(run)
        self.failed += not run.ok
        self.progress.update(1)
        self.log(_cell_line(cell, run, attempts))

    def _postfix(self) -> None:
        self.progress.set_postfix_str(f"failed {self.failed}, converting {self.converting}", refresh=False)


def _cell_line(cell: BenchCell, run: RunRecord, attempts: int) -> str:
    if not run.ok:
        return f"  FAILED {cell.label}: {run.error}"
    top1 = run.metric("top1")
    retried = f"  (attempt {attempts})" if attempts > 1 else ""
    return (f"  ok     {cell.label}: p50 {run.latency_ms('p50_ms') or float('nan'):.3f} ms"
            + (f"  top-1 {top1:.4f}" if top1 is not None else "  top-1 n/a") + retried)


def run_sweep(plan: Plan, store: SweepStore, stages, *, address: str | None, workers: int, echo) -> int:
    """Run every unfinished cell; the number that failed."""
    from tqdm import tqdm

    sweep = plan.sweep
    done = sum(store.done(c.key) is not None for c in plan.cells)
    echo(f"sweep {sweep.name}: {len(plan.cells)} cells ({done} done) over {len(sweep.variants)} model(s), "
         f"{len(sweep.devices)} device(s); results -> {store.results_path}")
    if done == len(plan.cells):
        return 0
    started = time.perf_counter()
    resources = start_ray(address, workers, sweep.devices)
    try:
        progress = tqdm(total=len(plan.cells), initial=done, desc=f"sweep {sweep.name}", unit="cell",
                        file=sys.stderr, dynamic_ncols=True)
        log = lambda line: progress.write(line, file=sys.stderr)  # noqa: E731
        local_cpus = workers if not address else 1
        driver = Driver(plan, store, stages, progress, log, min(local_cpus, resources.get("CPU", 1)))
        failed = driver.run()
        progress.close()
    finally:
        import ray

        ray.shutdown()
    echo(f"{len(plan.cells) - done - failed} ran, {failed} failed, {done} were done already "
         f"({time.perf_counter() - started:.1f} s); results in {store.results_path}")
    return failed
