"""Per-layer latency on a device from a runtime's per-node profile, named by the Keras layers (no TF).

The device runner returns ONNX Runtime's per-node kernel times (``device_runner.profile_onnx``): mean ms
per run of every node, in execution order, and the profiled run's p50. Here the nodes become rows of the
Keras layers they came from (tf2onnx names a node ``MODEL_1/LAYER_1/op...``; a QDQ graph's fused node
keeps the name of the layer whose output it writes) and of the block those layers form (a depthwise
separable block of V1, an inverted residual of V2/V3). What the runtime spends between kernels (feeding
inputs, scheduling, outputs) is its own row, so the table adds up to the profiled run's p50.
"""

from __future__ import annotations

import re

BETWEEN_NODES = "(between nodes)"
_ORT_SUFFIX = re.compile(r"(_token_\d+)?(_nchwc)?$")  # ONNX Runtime's, on nodes it fuses or adds
_OUR_SUFFIX = re.compile(r"(:\d+)?(__[nt]\d+)?$")  # from convert.onnx_convert.canonical_names
_BLOCKS = (
    (re.compile(r"^conv_(?:dw|pw|pad)_(\d+)(?:_|$)"), "conv_dw_pw_{}"),   # V1: (pad,) depthwise + pointwise
    (re.compile(r"^(block_\d+)(?:_|$)"), "{}"),                         # V2
    (re.compile(r"^(expanded_conv(?:_\d+)?)(?:_|$)"), "{}"),            # V2's first block, V3
)


def _layer_in(name: str) -> str | None:
    """``MODEL_1/LAYER_1/op...`` (tf2onnx's node and tensor names) -> ``LAYER``."""
    parts = name.split("/")
    return re.sub(r"_\d+$", "", parts[1]) if len(parts) >= 3 else None


def onnx_node_layers(path) -> dict[str, str]:
    """Node name -> Keras layer for the nodes of an ONNX file: from the node's name or, where tf2onnx
    named a node it made (pointwise convolutions become ``Conv__N``), its weights' or outputs' names."""
    import onnx

    found = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        for name in (node.name, *node.input[1:], *node.output, *node.input[:1]):
            layer = _layer_in(name)
            if layer:
                found[node.name] = layer
                break
    return found


def layer_of(node: str, node_layers: dict[str, str] | None = None) -> str:
    """The Keras layer a profiled node came from (ONNX Runtime names the nodes it fuses or adds after
    the original plus ``_token_N``); nodes the runtime or the quantizer added (the input's
    QuantizeLinear, layout reorders) are ``(runtime) NAME``."""
    original = _ORT_SUFFIX.sub("", node)
    found = (node_layers or {}).get(original) or _layer_in(node)
    return found or "(runtime) " + _OUR_SUFFIX.sub("", original)


_LAYER_PARTS = re.compile(r"(_bn|_relu|_act(_\d+)?|_act_shift|_act_scale|_rescale|_BN)$")


def block_of(layer: str) -> str:
    """The block a Keras layer belongs to: a V1 depthwise + pointwise pair, a V2/V3 inverted residual,
    else the layer with its batch-norm/activation suffixes dropped (``conv_bn`` and ``conv`` are one)."""
    for pattern, label in _BLOCKS:
        found = pattern.match(layer)
        if found:
            return label.format(found.group(1))
    base = re.sub(r"^bn_", "", layer)
    while _LAYER_PARTS.search(base):
        base = _LAYER_PARTS.sub("", base)
    return base or layer


def _rows(nodes: list[dict], key, total_ms: float) -> list[dict]:
    rows: dict[str, dict] = {}
    for node in nodes:
        row = rows.setdefault(key(node), {"layer": key(node), "ms": 0.0, "ops": {}})
        row["ms"] += float(node["ms"])
        row["ops"][node["op"]] = row["ops"].get(node["op"], 0) + 1
    for row in rows.values():
        row["ms"] = round(row["ms"], 5)
        row["share"] = round(row["ms"] / total_ms, 5) if total_ms > 0 else None
    return list(rows.values())


def layer_table(profile: dict, timed_p50_ms: float | None = None,
                node_layers: dict[str, str] | None = None) -> dict:
    """The runner's per-node profile -> ``{method, runs, total_ms, layers, blocks, ...}``.

    ``total_ms`` is the profiled run's p50; ``layers`` and ``blocks`` (execution order) add up to it with
    the ``(between nodes)`` row. ``timed_p50_ms`` (the unprofiled p50 of the same process) gives
    ``profiled_vs_timed``: how far profiling itself moved the whole-model time. ``node_layers``: see
    :func:`onnx_node_layers`.
    """
    nodes = [dict(n, layer=layer_of(n["node"], node_layers)) for n in profile["nodes"]]
    total = float(profile["run_p50_ms"])
    between = max(0.0, total - float(profile["nodes_total_ms"]))
    gap = [{"layer": BETWEEN_NODES, "ms": round(between, 5), "ops": {},
            "share": round(between / total, 5) if total > 0 else None}]
    table = {"method": profile["method"], "runs": profile["runs"], "total_ms": total,
             "nodes_total_ms": profile["nodes_total_ms"],
             "layers": _rows(nodes, lambda n: n["layer"], total) + gap,
             "blocks": _rows(nodes, lambda n: block_of(n["layer"]), total) + gap, "nodes": profile["nodes"]}
    if timed_p50_ms:
        table["timed_p50_ms"] = timed_p50_ms
        table["profiled_vs_timed"] = round(total / timed_p50_ms, 4)
    return table


def slowest(rows: list[dict], count: int) -> list[dict]:
    return sorted(rows, key=lambda r: -r["ms"])[:count]


def ops_text(ops: dict) -> str:
    return " ".join(f"{op}x{n}" if n > 1 else op for op, n in sorted(ops.items(), key=lambda kv: -kv[1]))


def block_ms(profile: dict) -> dict[str, float]:
    """ms per block (execution order) from a profile's layer rows; the between-nodes row left out."""
    blocks: dict[str, float] = {}
    for row in profile.get("layers") or []:
        if row["layer"] != BETWEEN_NODES:
            key = block_of(row["layer"])
            blocks[key] = round(blocks.get(key, 0.0) + float(row["ms"]), 5)
    return blocks


def read_profiles(path) -> dict[str, dict]:
    """``profile.json`` as ``edge-bench profile`` writes it -> {artifact file name: profile}, validated:
    one line naming the file and the key otherwise."""
    from edge_mobilenet.contracts.records import Where, check, get
    from edge_mobilenet.fileio import read_json

    data = check(read_json(path, "profile file"), Where(path), (dict,))
    where = Where(path)
    if get(data, "schema", where, (int,)) != 1:
        raise (where / "schema").fail(f"is {data['schema']}; this edge-bench reads schema 1")
    found = {}
    for index, item in enumerate(get(data, "profiles", where, (list,))):
        at = where / "profiles" / index
        check(item, at, (dict,))
        profile = get(item, "profile", at, (dict, type(None)))
        if profile is None or not profile.get("layers"):
            continue
        for row_index, row in enumerate(get(profile, "layers", at / "profile", (list,))):
            row_at = at / "profile" / "layers" / row_index
            check(row, row_at, (dict,))
            get(row, "layer", row_at, (str,))
            get(row, "ms", row_at, (float,))
        found[get(item, "artifact", at, (str,))] = profile
    return found


def prefix_table(blocks: list[str], prefix_rounds: list[list[float]], whole_rounds: list[float]) -> dict:
    """Per-block ms from the per-round p50s of the truncated prefixes (``convert.prefixes``), timed in
    interleaved rounds with the whole artifact (``whole_rounds``).

    A block's ms is the median over rounds of (its prefix - the previous prefix); the first row holds
    the first block and the runtime's fixed cost per invoke. q1/q3 give the spread of each difference
    over the rounds: the noise of the method.
    """
    import numpy as np

    prefixes = np.asarray(prefix_rounds, dtype=float)
    steps = np.diff(np.vstack([np.zeros(prefixes.shape[1]), prefixes]), axis=0)
    total = float(np.median(prefixes[-1]))
    rows = [{"layer": block, "ms": round(float(np.median(step)), 5),
             "q1_ms": round(float(np.percentile(step, 25)), 5), "q3_ms": round(float(np.percentile(step, 75)), 5),
             "share": round(float(np.median(step)) / total, 5) if total > 0 else None, "ops": {}}
            for block, step in zip(blocks, steps)]
    whole = float(np.median(whole_rounds))
    return {"method": "truncated prefixes, differenced", "runs": len(whole_rounds), "total_ms": total,
            "nodes_total_ms": round(sum(r["ms"] for r in rows), 5), "layers": rows, "blocks": rows,
            "timed_p50_ms": whole, "profiled_vs_timed": round(total / whole, 4) if whole > 0 else None,
            "noise_iqr_ms_median": round(float(np.median([r["q3_ms"] - r["q1_ms"] for r in rows])), 5)}
