"""``edge-bench detection-set``: a click command the CLI group registers (no TensorFlow)."""

from __future__ import annotations

import click

from edge_mobilenet.data.detection import DEFAULT_COUNT, DEFAULT_SIZE


@click.command("detection-set")
@click.argument("folder", type=click.Path())
@click.option("--count", type=int, default=DEFAULT_COUNT, show_default=True,
              help="Images over both splits (20% val).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=int, default=DEFAULT_SIZE, show_default=True, metavar="PX",
              help="Side of the square images in pixels.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def detection_set(folder, count, seed, size, quiet):
    """Write a synthetic COCO-format detection set into FOLDER: scikit-learn's digits pasted onto crops
    of its sample photographs, train/ and val/ each with instances.json and images/, plus manifest.json.

    FOLDER must be new, empty or a set this command wrote before (it is replaced whole)."""
    from edge_mobilenet.data.detection import write_detection_set

    manifest = write_detection_set(folder, count, seed, size, progress=not quiet)
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    click.echo(f"wrote {folder}: {manifest['count']} images {size}x{size} (train {train['images']}, "
               f"val {val['images']}), {train['annotations'] + val['annotations']} boxes, "
               f"{len(manifest['categories'])} categories, seed {seed}, sha256 {manifest['sha256'][:12]}")
