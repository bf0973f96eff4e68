"""Truncated prefixes of a model, converted as its TFLite artifact was: the per-block profile of LiteRT.

LiteRT runs a model as one XNNPACK delegate node and its Python API has no per-op timing
(tensorflow#59095). So the network is cut after each block (a cut is a layer whose output is the only
tensor later layers read), every prefix is converted with the artifact's format, I/O type, calibration
images and hard-swish rewrite, and the prefixes are timed on the device in interleaved rounds in one
process; a block's time is the difference between the prefix that ends with it and the one before
(``runtimes.profiling.prefix_table``). Each prefix runs whole, so the differences carry the noise of two
measurements: the table gives their spread over the rounds.
"""

from __future__ import annotations

import re
from pathlib import Path

from edge_mobilenet.errors import EdgeError


NO_OP_LAYERS = {"InputLayer", "Dropout", "Reshape", "Flatten"}  # nothing to time after them


def _inbound_layers(config: dict) -> set[str]:
    found = set()

    def walk(value):
        if isinstance(value, dict):
            history = (value.get("config") or {}).get("keras_history") if value.get("class_name") == \
                "__keras_tensor__" else None
            if history:
                found.add(history[0])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(config.get("inbound_nodes", []))
    return found


def cut_points(model) -> list[tuple[str, str]]:
    """``(block, layer)`` for the last layer of each block after which the network can be cut: no later
    layer reads an earlier tensor (residual and squeeze-excite branches are inside their block)."""
    from edge_mobilenet.runtimes.profiling import block_of

    layers = model.get_config()["layers"]
    index = {layer["name"]: i for i, layer in enumerate(layers)}
    last_reader = {name: i for name, i in index.items()}
    for i, layer in enumerate(layers):
        for name in _inbound_layers(layer):
            if name in index:
                last_reader[name] = max(last_reader[name], i)
    cuts, reach = {}, 0  # reach: the last layer that reads any layer before this one
    for i, layer in enumerate(layers):
        if i:
            reach = max(reach, last_reader[layers[i - 1]["name"]])
        if i and reach <= i and layer["class_name"] not in NO_OP_LAYERS:
            cuts[block_of(layer["name"])] = layer["name"]  # the last valid cut in the block wins
    return list(cuts.items())


def build_prefixes(artifact: Path, entry, folder: Path, log=print) -> list[tuple[str, Path]]:
    """The artifact's prefixes as ``.tflite`` files in ``folder``: ``[(block, path)]`` in network order,
    the last one the whole model."""
    from edge_mobilenet.contracts.formats import FORMATS
    from edge_mobilenet.convert.sources import load_float_model
    from edge_mobilenet.convert.tflite import TFLiteOptions, convert_keras
    from edge_mobilenet.data.calibration import CalibrationSource, load_calibration
    from edge_mobilenet.quiet import native_noise_filtered

    fmt = FORMATS[entry.format]
    if fmt.runtime != "tflite":
        raise EdgeError(f"{artifact}: prefixes are for TFLite artifacts")
    if not entry.source_file or not Path(entry.source_file).is_file():
        raise EdgeError(f"{artifact}: its float source {entry.source_file!r} is not on this machine; the "
                        "prefix profile converts truncated copies of it")
    with native_noise_filtered():  # TensorFlow's import notices (oneDNN, absl)
        import keras

        float_model = load_float_model(entry.source_file, output_dir=folder)
    calibration = None
    if fmt.calibrated:
        record = entry.calibration
        source = CalibrationSource(record.folder, record.count, record.seed)
        calibration = load_calibration(source, float_model.size, float_model.preprocessing).inputs(
            float_model.preprocessing)
    rewrite = (entry.facts.get("hard_swish_rewrite") or {"enabled": True}).get("enabled", True)
    float_model.apply_hard_swish_rewrite(rewrite and fmt.integer, calibration[:8] if calibration is not None else None)
    model = float_model.model_for(fmt)
    io = (entry.facts.get("recipe") or {}).get("io", "int8")
    cuts = cut_points(model)
    written = []
    try:
        for number, (block, layer) in enumerate(cuts):
            prefix = keras.Model(model.input, model.get_layer(layer).output)
            with native_noise_filtered():
                data, _ = convert_keras(prefix, [fmt.name], calibration, TFLiteOptions(io=io))[fmt.name]
            path = folder / f"prefix_{number:02d}_{re.sub(r'[^A-Za-z0-9_]', '_', block)}{fmt.suffix}"
            path.write_bytes(data)
            written.append((block, path))
            log(f"  prefix {number + 1}/{len(cuts)}: up to {layer} ({block})")
    finally:
        float_model.close()
    return written
