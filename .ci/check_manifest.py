"""CI: the manifest `make quantize` wrote lists every format of the table, each file intact, int8 close
to float; prints each artifact's sha256 (what the bytes of this commit are, with what they depend on)."""

import sys
from pathlib import Path

from edge_mobilenet.contracts.formats import FORMATS
from edge_mobilenet.contracts.manifest import read_manifest
from edge_mobilenet.errors import EdgeError
from edge_mobilenet.fileio import sha256_file

path = Path(sys.argv[1])
try:
    manifest = read_manifest(path)
except EdgeError as error:
    sys.exit(f"manifest check: {error}")
problems = []
for entry in manifest.entries:
    file = manifest.artifact_path(entry)
    if not file.is_file():
        problems.append(f"{file}: missing")
        continue
    if sha256_file(file) != entry.sha256:
        problems.append(f"{file}: sha256 differs from the manifest")
    for key in ("tool_versions", "cache_key"):
        if key not in entry.facts:
            problems.append(f"{file}: manifest entry lacks {key}")
    if entry.params is None or entry.macs is None:
        problems.append(f"{file}: manifest entry lacks params/macs")
    agreement = entry.validation.agreement_with_float if entry.validation else None
    what = "detections found again" if entry.task == "detection" else "top-1 agreement"
    if FORMATS[entry.format].integer and (agreement is None or agreement < 0.9):
        problems.append(f"{file}: int8 {what} with float is {agreement}")
    if entry.task == "detection" and FORMATS[entry.format].integer:
        found, wanted = entry.validation.metrics.get("map"), entry.validation.float_metrics.get("map")
        if found is None or wanted is None or found < 0.9 * wanted:
            problems.append(f"{file}: int8 mAP {found} is below 90% of float mAP {wanted}")
    print(f"sha256 {entry.sha256}  {entry.file}")
missing = set(FORMATS) - {e.format for e in manifest.entries}
if missing:
    problems.append(f"{path}: no artifact of format {', '.join(sorted(missing))}")
for line in problems:
    print(f"manifest check: {line}")
print(f"manifest check: {len(manifest.entries)} artifacts, {len(problems)} problems")
sys.exit(1 if problems else 0)
