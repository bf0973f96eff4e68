"""Plain-text and Markdown tables."""

from __future__ import annotations

from edge_mobilenet.text import text_table


def describe_table(report: dict) -> str:
    rows = [[l["name"], l["type"], "x".join("?" if d is None else str(d) for d in l["output_shape"][1:]),
             l["params"], l["macs"]] for l in report["layers"]]
    text = [f"{report['model']} alpha={report['alpha']} size={report['size']}",
            text_table(["layer", "type", "output", "params", "MACs"], rows, "lllrr"),
            "",
            f"total: {report['params']:,} params ({report['params'] / 1e6:.3f} M, BN folded; "
            f"Keras counts {report['keras_params']:,}), {report['macs']:,} MACs "
            f"({report['macs'] / 1e6:.1f} M)"]
    if report.get("separable_blocks"):
        blocks = [[s["depthwise"], s["pointwise"], s["macs"], s["standard_conv_macs"], s["ratio"]]
                  for s in report["separable_blocks"]]
        text += ["", "depthwise separable blocks vs the standard convolution they replace:",
                 text_table(["depthwise", "pointwise", "MACs", "standard conv MACs", "ratio"], blocks,
                            "llrrr")]
    if report.get("detection"):
        detection = report["detection"]
        maps = ", ".join(f"{h}x{w}x{a}" for h, w, a in detection["feature_maps"])
        text += ["", f"{detection['anchors']} anchors (feature maps HxWxanchors: {maps}); "
                     f"{detection['classes']} classes + background (index 0)"]
    return "\n".join(text)
