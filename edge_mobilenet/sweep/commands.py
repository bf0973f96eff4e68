"""``edge-bench sweep SWEEP.toml``: the click command (cli.py registers it with the pipeline's stages)."""

from __future__ import annotations

import os
import sys
from typing import Callable

import click


def run_sweep_command(path: str, stages, *, address: str | None, workers: int | None, dry_run: bool,
                      output: str | None, echo) -> int:
    """Validate the whole sweep, then (unless ``dry_run``) run its unfinished cells; failures counted."""
    from dataclasses import replace
    from pathlib import Path

    from edge_mobilenet.errors import EdgeError
    from edge_mobilenet.sweep.plan import describe, make_plan
    from edge_mobilenet.sweep.runner import run_sweep
    from edge_mobilenet.sweep.spec import load_sweep
    from edge_mobilenet.sweep.store import SweepStore

    if workers is not None and workers < 1:
        raise EdgeError(f"--workers must be >= 1; received {workers}")
    sweep = load_sweep(path, stages)
    if output:
        sweep = replace(sweep, output=Path(output))
    store = SweepStore(sweep.output)
    plan = make_plan(sweep, stages)
    if dry_run:
        for line in describe(plan, store):
            echo(line)
        return 0
    store.acquire()
    try:
        return run_sweep(plan, store, stages, address=address, workers=workers or os.cpu_count() or 1,
                         echo=lambda m: echo(m, err=True))
    finally:
        store.release()


def make_sweep_command(stages_loader: Callable[[], object]) -> click.Command:
    @click.command("sweep")
    @click.argument("sweep_file", type=click.Path(dir_okay=False))
    @click.option("--dry-run", is_flag=True, help="Print the cells and what is already done; run nothing.")
    @click.option("--address", default=None, metavar="HOST:PORT",
                  help="Join this Ray cluster [default: start a local Ray instance].")
    @click.option("--workers", type=int, default=None,
                  help="CPUs of the local Ray instance, i.e. conversions at once [this machine's cores].")
    @click.option("--output", default=None, help="Sweep folder [the sweep file's output].")
    def sweep(sweep_file, dry_run, address, workers, output):
        """Run a grid of models x widths x sizes x formats x devices x threads on Ray (resumable).

        Finished cells are skipped on a re-run; results go to OUTPUT/results.json as each cell
        finishes (`edge-bench report OUTPUT/results.json` gives Pareto fronts and an HTML page).
        """
        failed = run_sweep_command(sweep_file, stages_loader(), address=address, workers=workers,
                                   dry_run=dry_run, output=output, echo=click.echo)
        sys.exit(1 if failed else 0)

    return sweep
