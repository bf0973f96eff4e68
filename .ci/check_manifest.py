"""CI: the manifest `make quantize` wrote lists every recipe model x format, each file intact."""

import hashlib
import json
import sys
from pathlib import Path

path = Path(sys.argv[1])
manifest = json.loads(path.read_text())
artifacts = manifest["artifacts"]
problems = []
for entry in artifacts:
    file = path.parent / entry["file"]
    if not file.is_file():
        problems.append(f"{file}: missing")
        continue
    if hashlib.sha256(file.read_bytes()).hexdigest() != entry["sha256"]:
        problems.append(f"{file}: sha256 differs from the manifest")
    for key in ("format", "input", "output", "params", "macs", "tool_versions"):
        if key not in entry:
            problems.append(f"{file}: manifest entry lacks {key}")
    agreement = entry.get("validation", {}).get("top1_agreement_with_float")
    if entry["format"] in ("int8", "onnx-int8") and (agreement is None or agreement < 0.9):
        problems.append(f"{file}: int8 top-1 agreement with float is {agreement}")
formats = {e["format"] for e in artifacts}
missing = {"fp32", "fp16", "dynamic", "int8", "onnx", "onnx-int8"} - formats
if missing:
    problems.append(f"{path}: no artifact of format {', '.join(sorted(missing))}")
for line in problems:
    print(f"manifest check: {line}")
print(f"manifest check: {len(artifacts)} artifacts, {len(problems)} problems")
sys.exit(1 if problems else 0)
