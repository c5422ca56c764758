"""Lambda layers (timm's ``LambdaLayer``: the LambdaResNets and ``lamhalobotnet50ts_256``): every
head's queries against one key and one value shared by all heads, with a position lambda from a 3-d
convolution over the values or from a relative position embedding; the output holds every head's
answer, head-major over the values. timm's reshapes mapped the values onto positions, and every
lambda layer was left whole. Now its qkv roots one group: a unit is a channel of every head's
query, of the key and of the position lambda, with ``dim_v / dim_qk`` values (each in every
head's part of the output)."""
import pytest
import torch
from timm.layers.lambda_layer import LambdaLayer

from conftest import around, assert_counts_what_timm_runs, assert_equivalent, make
from isoprune import _groups, _zoo


@pytest.mark.parametrize("position", ["convolution", "embedding"])
@pytest.mark.parametrize("stride", [1, 2])
def test_pruned_equals_zeroed(position, stride):
    conv = position == "convolution"
    layer = LambdaLayer(32, 32, feat_size=None if conv else (8, 8), stride=stride, num_heads=4, dim_head=4, r=5 if conv else None)
    model = around(layer, 32, 32)
    x = torch.randn(2, 3, 8, 8)
    analysis = _groups.analyse(model, x)
    assert analysis.frozen == {}
    group = next(g for g in analysis.groups if g.root == "2.qkv")
    assert (group.channels, group.blocks) == (4, 7)  # 4 units: 1 of 4 query-key channels and 2 of 8 values (4 heads x 4 + 4 + 8 = 7 x 4)
    assert_equivalent(model, 0.5, changes=0.05, inputs=x)
    assert type(layer) is _zoo.PrunedLambdaLayer and (layer.dim_qk, layer.dim_v) == (2, 4)
    assert layer.qkv.out_channels == 4 * 2 + 2 + 4 and model[4].in_channels == 4 * 4
    assert (layer.conv_lambda.out_channels if conv else layer.pos_emb.shape[-1]) == 2


def test_lambda_resnet_is_cut_and_counts_what_timm_runs():
    model = make("lambda_resnet26t", pretrained_cfg_overlay={"input_size": (3, 64, 64)})
    layers = [m for m in model.modules() if isinstance(m, LambdaLayer)]
    built = [(m.dim_qk, m.dim_v) for m in layers]
    assert _groups.analyse(model).frozen == {}
    assert_counts_what_timm_runs(model, 0.3)
    assert all(type(m) is _zoo.PrunedLambdaLayer for m in layers)
    for m, (dim_qk, dim_v) in zip(layers, built):  # a unit: one query-key channel, dim_v / dim_qk values
        assert m.dim_qk < dim_qk and m.dim_v * dim_qk == dim_v * m.dim_qk
