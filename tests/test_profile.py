"""Parameter and MAC counts against the MobileNet papers' published tables."""

import json
import math

import pytest

from edge_mobilenet.models import build_model
from edge_mobilenet.models.profile import describe, layer_costs, separable_costs
from edge_mobilenet.models.published import PUBLISHED


def _within_published(ours: float, published: float) -> bool:
    """Published tables give 2-3 significant digits, truncated: allow one unit of the last digit or 3%."""
    text = f"{published:g}"
    unit = 10 ** -(len(text.split(".")[1])) if "." in text else 1
    return abs(ours - published) <= max(0.03 * published, unit)


@pytest.mark.parametrize("name,alpha,size,macs_m,params_m", PUBLISHED,
                         ids=[f"{r[0]}-{r[1]}-{r[2]}" for r in PUBLISHED])
def test_totals_match_published_tables(name, alpha, size, macs_m, params_m):
    rows = layer_costs(build_model(name, alpha=alpha, size=size))
    macs = sum(r.macs for r in rows) / 1e6
    params = sum(r.params for r in rows) / 1e6
    assert _within_published(macs, macs_m), f"MACs {macs:.1f}M vs published {macs_m}M"
    if params_m is not None:
        assert _within_published(params, params_m), f"params {params:.3f}M vs published {params_m}M"


def test_within_published_rejects_a_real_miscount():
    assert not _within_published(300.8 * 1.05, 300)
    assert not _within_published(4.221 * 1.2, 4.2)


def test_layer_rows_are_exact_for_a_known_layer():
    model = build_model("mobilenet_v1", alpha=1.0, size=224)
    rows = {r.name: r for r in layer_costs(model)}
    # conv1: 3x3x3x32 kernel on a 112x112 output; BN folds into a 32-wide bias.
    assert rows["conv1"].output_shape == [None, 112, 112, 32]
    assert rows["conv1"].macs == 112 * 112 * 3 * 3 * 3 * 32
    assert rows["conv1"].params == 3 * 3 * 3 * 32 + 32
    assert rows["conv1_bn"].params == 0
    # depthwise 3x3 over 32 channels at 112x112
    assert rows["conv_dw_1"].macs == 112 * 112 * 9 * 32
    assert rows["conv_preds"].macs == 1024 * 1000


def test_separable_ratio_is_one_over_n_plus_one_over_k_squared():
    model = build_model("mobilenet_v1", alpha=1.0, size=224)
    pairs = separable_costs(model)
    assert len(pairs) == 13
    first = pairs[0]  # 32 -> 64 channels, 3x3
    assert first.ratio == pytest.approx(1 / 64 + 1 / 9)
    assert all(p.ratio < 0.2 for p in pairs)


def test_describe_json_has_documented_keys():
    model = build_model("mobilenet_v3_small", alpha=0.75, size=96, classes=10)
    report = json.loads(json.dumps(describe(model, model_name="mobilenet_v3_small", alpha=0.75, size=96)))
    assert {"model", "alpha", "size", "params", "macs", "layers"} <= set(report)
    assert report["params"] == sum(l["params"] for l in report["layers"])
    assert report["macs"] == sum(l["macs"] for l in report["layers"])
    assert all({"name", "type", "output_shape", "params", "macs"} <= set(l) for l in report["layers"])
    assert report["layers"][-1]["output_shape"] == [None, 10]
    assert math.isclose(report["keras_params"], model.count_params())
