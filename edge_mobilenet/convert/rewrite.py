"""Rewrite hard-swish / hard-sigmoid activations of a Keras model into int8-friendly layers.

XNNPACK has no int8 HARD_SWISH kernel, so a full-integer MobileNetV3 falls apart into one partition
per hard-swish with a reference kernel between each, and runs slower than its float model. The
rewritten model computes the same function with ops XNNPACK takes in int8 (ADD with a fused RELU6,
MUL), built from standard Keras layers only:

* hard_swish(x) = x * relu6(x + 3) / 6 and hard_sigmoid(x) = relu6(x + 3) / 6.
* The 1/6 is deferred ("pending scale") through the ops that commute with a positive scalar
  (zero padding, pooling, bias-free convolutions, Multiply) and applied where a later op needs the
  true value: typically between a bias-free convolution and its BatchNormalization, where the TFLite
  converter folds it into the convolution's weights (free), or on the small pooled tensor before a
  squeeze-excite convolution. Where it must be applied right after a product, x is scaled instead
  ((x / 6) * relu6(x + 3)), because the converter folds ``x * relu6(x + 3) * (1/6)`` back into
  HARD_SWISH.

Recognised activations: ``Activation("hard_swish" | "hard_silu" | "hard_sigmoid")`` layers and the
keras.applications MobileNetV3 hard-sigmoid ``ReLU(6.0)(x + 3.0) * (1.0 / 6.0)`` (two unnamed ops around
a ReLU layer). Weights are copied unchanged; the rewritten model is checked against the original on a
random batch (max |difference| <= 1e-4 of the largest output) and discarded (original returned, every site reported as left) if outputs differ.
"""

from __future__ import annotations

import math

import numpy as np

ONE_SIXTH = 1.0 / 6.0
# Allowed |old - new| over the largest |old| output: float32 rounding of reordered products stays
# near 1e-6; a relative limit suits both softmax outputs (all small) and large logits.
MAX_REL_DIFF = 1e-4
HARD_SWISH_NAMES = {"hard_swish": "hard_swish", "hard_silu": "hard_swish",
                    "hard_sigmoid": "hard_sigmoid"}


def _activation_name(fn) -> str:
    return getattr(fn, "__name__", "")


def rewrite_hard_swish(model, *, defer_scale: bool = True, check_batch: np.ndarray | None = None):
    """Return ``(new_model, report)``; ``report = {"rewritten": [names], "left": [{layer, reason}]}``.

    Args:
        model: a functional (or Sequential) Keras model, e.g. keras.applications.MobileNetV3Small.
        defer_scale: move each 1/6 to where it is cheapest (see module docstring); False applies it
            in place, as the builder's ``hard_swish="decomposed"`` form does.
        check_batch: inputs for the equality check; a random batch in the model's input range if None.
    """
    import keras

    graph = model._functional if isinstance(model, keras.Sequential) else model
    if not hasattr(graph, "_nodes_by_depth"):
        return model, {"rewritten": [], "left": [
            {"layer": model.name, "reason": "not a functional Keras model; its graph can't be traced"}]}
    sites, left = _find_sites(graph)
    if not sites:
        return model, {"rewritten": [], "left": left}
    new_model = _Rewriter(graph, sites, defer_scale).run()
    rewritten = sorted({site.name for site in sites.values()})
    diff, peak = _max_abs_diff(graph, new_model, check_batch)
    limit = MAX_REL_DIFF * max(peak, 1e-6)
    if not diff <= limit:
        reason = f"rewritten model's outputs differ by {diff:.3g} (> {limit:.3g}); model left as is"
        return model, {"rewritten": [], "left": left + [{"layer": n, "reason": reason} for n in rewritten]}
    return new_model, {"rewritten": rewritten, "left": left, "max_abs_diff": diff, "max_abs_output": peak}


class _Site:
    """One activation to rewrite: ``kind`` on tensor ``source``; ``skip`` nodes it replaces."""

    def __init__(self, kind: str, name: str, source, output, skip=()):
        self.kind, self.name, self.source, self.output = kind, name, source, output
        self.skip = set(skip)


def _consumers(graph) -> dict[int, list]:
    consumers: dict[int, list] = {}
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            for tensor in node.arguments.keras_tensors:
                consumers.setdefault(id(tensor), []).append(node)
    return consumers


def _find_sites(graph) -> tuple[dict[int, _Site], list[dict]]:
    """Sites keyed by id(first node), and the activations left alone with the reason."""
    import keras

    sites, left = {}, []
    consumers = _consumers(graph)
    outputs = {id(t) for t in graph.outputs}
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            op = node.operation
            kind = HARD_SWISH_NAMES.get(_activation_name(getattr(op, "activation", None)))
            if isinstance(op, keras.layers.Activation) and kind:
                reason = _unsafe(op, node)
                if reason:
                    left.append({"layer": op.name, "reason": reason})
                else:
                    sites[id(node)] = _Site(kind, op.name, node.arguments.keras_tensors[0],
                                            node.outputs[0])
            elif kind:
                left.append({"layer": op.name, "reason": f"{kind} fused inside a {type(op).__name__} "
                             "layer; apply it as a separate Activation layer to have it rewritten"})
            else:
                site = _applications_hard_sigmoid(node, consumers, outputs)
                if site:
                    sites[id(node)] = site
    return sites, left


def _unsafe(op, node) -> str | None:
    if len(node.arguments.keras_tensors) != 1:
        return "activation called on more than one tensor"
    if getattr(op, "compute_dtype", "float32") != "float32":
        return f"computes in {op.compute_dtype}; only float32 layers are rewritten"
    return None


def _is_op(node, name: str) -> bool:
    """A raw keras.ops call (``x + 3.0``), not a Layer of the same class name."""
    import keras

    return type(node.operation).__name__ == name and not isinstance(node.operation, keras.layers.Layer)


def _constant_arg(node, value: float) -> bool:
    tensors = node.arguments.keras_tensors
    constants = [a for a in node.arguments.args if isinstance(a, (int, float))]
    return (len(tensors) == 1 and len(constants) == 1 and not node.arguments.kwargs
            and math.isclose(constants[0], value, rel_tol=1e-6))


def _single_consumer(tensor, consumers, outputs):
    users = consumers.get(id(tensor), [])
    return users[0] if len(users) == 1 and id(tensor) not in outputs else None


def _applications_hard_sigmoid(node, consumers, outputs) -> _Site | None:
    """keras.applications V3: ``layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)``."""
    import keras

    if not (_is_op(node, "Add") and _constant_arg(node, 3.0)):
        return None
    relu = _single_consumer(node.outputs[0], consumers, outputs)
    if relu is None or not isinstance(relu.operation, keras.layers.ReLU):
        return None
    layer = relu.operation
    if not (layer.max_value == 6.0 and layer.negative_slope == 0 and layer.threshold == 0):
        return None
    scale = _single_consumer(relu.outputs[0], consumers, outputs)
    if scale is None or not (_is_op(scale, "Multiply") and _constant_arg(scale, ONE_SIXTH)):
        return None
    return _Site("hard_sigmoid", layer.name, node.arguments.keras_tensors[0], scale.outputs[0],
                 skip=(id(relu), id(scale)))


class _Value:
    """A tensor of the new graph standing for ``raw * scale`` of the original; built lazily."""

    def __init__(self, rewriter, raw=None, scale: float = 1.0, hard_swish=None):
        self.rewriter, self._raw, self.scale = rewriter, raw, scale
        self.hard_swish = hard_swish  # (x, gate, name) of a bare x * relu6(x + 3) product
        self._true = raw if scale == 1.0 else None

    def raw(self):
        if self._raw is None:
            x, gate, name = self.hard_swish
            self._raw = self.rewriter.layer("Multiply", name)([x, gate])
        return self._raw

    def true(self, name: str):
        """The original tensor's value (pending scale applied)."""
        if self._true is not None:
            return self._true
        if self.hard_swish is not None:
            x, gate, site = self.hard_swish
            scaled = self.rewriter.layer("Rescaling", f"{site}_scale", scale=ONE_SIXTH)(x)
            self._true = self.rewriter.layer("Multiply", site if self._raw is None else f"{site}_true")(
                [scaled, gate])
        else:
            self._true = self.rewriter.layer("Rescaling", f"{name}_rescale", scale=self.scale)(self.raw())
        return self._true


class _Rewriter:
    """Re-traces a functional graph node by node, replacing the activation sites."""

    def __init__(self, graph, sites: dict[int, _Site], defer_scale: bool):
        import keras

        self.keras, self.graph, self.sites, self.defer = keras, graph, sites, defer_scale
        self.values: dict[int, _Value] = {}
        self.clones: dict[int, object] = {}
        self.names = {layer.name for layer in graph.layers}
        self.skip = set().union(*(site.skip for site in sites.values()))

    def layer(self, class_name: str, name: str, **config):
        """A new weightless Keras layer with a unique name."""
        unique, index = name, 1
        while unique in self.names:
            unique, index = f"{name}_{index}", index + 1
        self.names.add(unique)
        return getattr(self.keras.layers, class_name)(name=unique, **config)

    def run(self):
        for depth in sorted(self.graph._nodes_by_depth, reverse=True):
            for node in self.graph._nodes_by_depth[depth]:
                self.visit(node)
        inputs = [self.values[id(t)].true(t.name) for t in self.graph.inputs]
        outputs = self.keras.tree.map_structure(
            lambda t: self.values[id(t)].true(_producer_name(t)), self.graph._outputs_struct)
        return self.keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=self.graph.name)

    def visit(self, node) -> None:
        op = node.operation
        if id(node) in self.skip:
            return
        if node.is_input:
            tensor = node.outputs[0]
            self.values[id(tensor)] = _Value(self, self.keras.Input(
                batch_shape=tensor.shape, dtype=tensor.dtype, name=op.name))
        elif id(node) in self.sites:
            site = self.sites[id(node)]
            self.values[id(site.output)] = self.activation(site)
        elif self.defer and self.commutes(node):
            value = self.values[id(node.arguments.keras_tensors[0])]
            out = self.call_clone(op, node, lambda a: value.raw())
            self.values[id(node.outputs[0])] = _Value(self, out, value.scale)
        elif self.defer and isinstance(op, self.keras.layers.Multiply) and len(node.arguments.args) == 1:
            values = [self.values[id(t)] for t in node.arguments.keras_tensors]
            out = self.call_clone(op, node, lambda t: self.values[id(t)].raw())
            self.values[id(node.outputs[0])] = _Value(self, out, math.prod(v.scale for v in values))
        else:
            out = self.call_clone(op, node, lambda t: self.values[id(t)].true(_producer_name(t)))
            for old, new in zip(node.outputs, self.keras.tree.flatten(out)):
                self.values[id(old)] = _Value(self, new)

    def activation(self, site: _Site) -> _Value:
        x = self.values[id(site.source)].true(_producer_name(site.source))
        gate = self.layer("Rescaling", f"{site.name}_shift", scale=1.0, offset=3.0)(x)
        gate = self.layer("ReLU", f"{site.name}_relu6", max_value=6.0)(gate)
        if site.kind == "hard_swish":
            value = _Value(self, scale=ONE_SIXTH, hard_swish=(x, gate, site.name))
            return value if self.defer else _Value(self, value.true(site.name))
        if self.defer:
            return _Value(self, gate, ONE_SIXTH)
        return _Value(self, self.layer("Rescaling", site.name, scale=ONE_SIXTH)(gate))

    def commutes(self, node) -> bool:
        """Single-input ops with f(s * x) = s * f(x) for a positive scalar s."""
        L, op = self.keras.layers, node.operation
        if len(node.arguments.keras_tensors) != 1 or len(node.outputs) != 1:
            return False
        if isinstance(op, (L.GlobalAveragePooling2D, L.GlobalMaxPooling2D)):
            # over a 1x1 map the converter drops the pooling, the 1/6 lands next to the product
            # again and the pattern folds back into HARD_SWISH: apply the scale before it instead
            return tuple(node.arguments.keras_tensors[0].shape[1:3]) != (1, 1)
        if isinstance(op, (L.ZeroPadding2D, L.AveragePooling2D, L.MaxPooling2D)):
            return True
        return (type(op) in (L.Conv2D, L.DepthwiseConv2D, L.Dense) and not op.use_bias
                and _activation_name(op.activation) == "linear")

    def call_clone(self, op, node, convert):
        """Call a copy of ``op`` (same config and weights) on the converted arguments."""
        tree = self.keras.tree
        is_tensor = self.keras.KerasTensor
        args = tree.map_structure(lambda a: convert(a) if isinstance(a, is_tensor) else a,
                                  node.arguments.args)
        kwargs = tree.map_structure(lambda a: convert(a) if isinstance(a, is_tensor) else a,
                                    node.arguments.kwargs)
        if not isinstance(op, self.keras.layers.Layer):
            return op(*args, **kwargs)
        first_call = id(op) not in self.clones
        if first_call:
            self.clones[id(op)] = op.__class__.from_config(op.get_config())
        clone = self.clones[id(op)]
        out = clone(*args, **kwargs)
        if first_call and op.weights:
            clone.set_weights(op.get_weights())
        return out


def _producer_name(tensor) -> str:
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history else "tensor"


def _max_abs_diff(old, new, batch: np.ndarray | None) -> tuple[float, float]:
    """Largest |old - new| over all outputs, and the largest |old| output."""
    import keras

    if batch is None:
        shape = [2 if d is None else d for d in old.inputs[0].shape]
        takes_pixels = any(isinstance(layer, keras.layers.Rescaling) for layer in old.layers[:3])
        low, high = (0.0, 255.0) if takes_pixels else (-1.0, 1.0)
        batch = np.random.default_rng(0).uniform(low, high, shape).astype(np.float32)
    old_out = keras.tree.flatten(old(batch, training=False))
    new_out = keras.tree.flatten(new(batch, training=False))
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(old_out, new_out))
    return diff, max(float(np.max(np.abs(np.asarray(a)))) for a in old_out)
