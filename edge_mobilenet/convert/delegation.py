"""How much of a TFLite graph a delegate (XNNPACK) took, from an interpreter's node list.

After ``allocate_tensors()`` a LiteRT / tflite-runtime interpreter still lists every original node,
followed by one ``DELEGATE`` node per partition the delegate took. Which original nodes each partition
covers is not exposed, so it is recovered from the tensors: walking back from a partition's outputs
through their producers, stopping at the partition's inputs, visits exactly the nodes it replaced.
Everything no partition visits runs on the interpreter's own kernels ("outside").

Pure function of the interpreter object: no TensorFlow import.
"""

from __future__ import annotations

from collections import Counter

DELEGATE_OP = "DELEGATE"


def _nodes(interpreter) -> list[dict]:
    return [{"op": detail["op_name"],
             "inputs": [int(t) for t in detail["inputs"] if t >= 0],
             "outputs": [int(t) for t in detail["outputs"] if t >= 0]}
            for detail in interpreter._get_ops_details()]


def _covered(partition: dict, producer: dict[int, int], nodes: list[dict]) -> set[int]:
    """Indices of the original nodes one delegate partition replaced."""
    boundary = set(partition["inputs"])
    pending = [t for t in partition["outputs"] if t not in boundary]
    seen_tensors: set[int] = set()
    covered: set[int] = set()
    while pending:
        tensor = pending.pop()
        if tensor in seen_tensors or tensor not in producer:
            continue
        seen_tensors.add(tensor)
        node = producer[tensor]
        if node in covered:
            continue
        covered.add(node)
        pending.extend(t for t in nodes[node]["inputs"] if t not in boundary)
    return covered


def delegation_stats(interpreter) -> dict:
    """Delegate coverage of an allocated interpreter's main graph.

    Returns:
        ``{"nodes_total", "nodes_delegated", "partitions", "ops_outside": {op: count}, "split"}``:
        ``nodes_total`` counts the model's own nodes, ``partitions`` the delegate nodes, ``split`` is
        true when the graph runs in more than one partition or, with a partition, when a node other
        than a final SOFTMAX stays outside it.
    """
    nodes = _nodes(interpreter)
    original = [i for i, node in enumerate(nodes) if node["op"] != DELEGATE_OP]
    partitions = [node for node in nodes if node["op"] == DELEGATE_OP]
    producer = {tensor: i for i in original for tensor in nodes[i]["outputs"]}
    delegated: set[int] = set()
    for partition in partitions:
        delegated |= _covered(partition, producer, nodes)
    outside = [i for i in original if i not in delegated]
    ops_outside = Counter(nodes[i]["op"] for i in outside)
    final_softmax_only = (len(outside) == 1 and nodes[outside[0]]["op"] == "SOFTMAX"
                          and _is_final(outside[0], nodes, interpreter))
    split = len(partitions) > 1 or (len(partitions) == 1 and bool(outside) and not final_softmax_only)
    return {"nodes_total": len(original), "nodes_delegated": len(delegated),
            "partitions": len(partitions), "ops_outside": dict(sorted(ops_outside.items())),
            "split": split}


def _is_final(index: int, nodes: list[dict], interpreter) -> bool:
    graph_outputs = {int(detail["index"]) for detail in interpreter.get_output_details()}
    return bool(set(nodes[index]["outputs"]) & graph_outputs)
