"""How much of a TFLite graph a delegate (XNNPACK) took, from an interpreter's node list.

After ``allocate_tensors()`` a LiteRT / tflite-runtime interpreter still lists every original node,
followed by one ``DELEGATE`` node per partition the delegate took; which original nodes a partition
covers is recovered by walking back from its outputs to its inputs. The one implementation lives in the
self-contained device runner (it must travel to devices alone); the quantize manifest uses the same.
"""

from __future__ import annotations

from edge_mobilenet.runtimes.device_runner import delegation


def delegation_stats(interpreter) -> dict:
    """``{"xnnpack", "nodes_total", "nodes_delegated", "partitions", "ops_outside", "split"}``.

    ``split`` is true when the graph runs in more than one partition or, with one partition, when a
    node other than a final SOFTMAX (or a detector's TFLite_Detection_PostProcess) stays outside it.
    """
    stats = delegation(interpreter)
    if stats is None:
        raise RuntimeError("this interpreter does not list its nodes (_get_ops_details)")
    return stats
