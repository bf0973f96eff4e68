"""Plain-text and Markdown tables."""

from __future__ import annotations


def text_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A fixed-width table; ``align`` is one char per column, 'l' or 'r' (default: numbers right)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    if align is None:
        align = "".join("r" if rows and isinstance(rows[0][i], (int, float)) else "l"
                        for i in range(len(headers)))
    def line(values):
        return "  ".join(v.rjust(w) if a == "r" else v.ljust(w)
                         for v, w, a in zip(values, widths, align)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def markdown_table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


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
    return "\n".join(text)
