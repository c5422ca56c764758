"""timm's multi-query attention (``MultiQueryAttention2d``: MobileNetV4's hybrids, MobileNetV5):
every head's query against one key and one value shared by all heads, on the feature map, the
queries possibly pooled and the key and value possibly from a strided map. The tracer mapped
channels through timm's reshapes onto tokens, and left every one whole. Now a head dim is cut: a
channel of every head's query, of the key, of the value and of every head's output (``_zoo.
multi_query_attention_trace``); the heads, all answered by one key and value, stay."""

import pytest
import torch
from timm.layers.attention2d import MultiQueryAttention2d
from torch import nn

import isoprune
from conftest import around, assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, make
from isoprune import _groups


def _unfused(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, MultiQueryAttention2d):
            m.fused_attn = False
    return model


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_pruned_equals_zeroed_with_head_dims_cut(strides, fused):
    query_strides, kv_stride = strides
    attn = MultiQueryAttention2d(32, num_heads=4, key_dim=8, value_dim=8, query_strides=query_strides, kv_stride=kv_stride)
    model = around(attn, 32, 32)
    if not fused:
        _unfused(model)
    x = torch.randn(2, 3, 8, 8)
    assert _groups.analyse(model, x).frozen == {}
    assert_equivalent(model, 0.5, changes=0.05, inputs=x)
    assert attn.num_heads == 4 and attn.key_dim == attn.value_dim == 4 == attn.key.proj.out_channels == attn.value.proj.out_channels
    assert attn.query.proj.out_channels == 16 == attn.output.proj.in_channels and attn.scale == 4**-0.5


def test_values_wider_than_keys_stay_whole():
    attn = MultiQueryAttention2d(32, num_heads=4, key_dim=8, value_dim=16)
    model = around(attn, 32, 32)
    x = torch.randn(2, 3, 8, 8)
    assert set(_groups.analyse(model, x).frozen) == {"2.query.proj", "2.key.proj", "2.value.proj"}
    isoprune.prune(model, 0.5, example_inputs=x)
    assert attn.key_dim == 8 and attn.value_dim == 16 and model[0].out_channels < 32  # the stream is still cut
    with torch.no_grad():
        assert model(x).shape == (2, 10)


@pytest.mark.parametrize("fused", [True, False])
def test_mobilenetv4_hybrid(fused):
    model = make("mobilenetv4_hybrid_micro")
    lively(model)
    blocks = [m for m in model.modules() if isinstance(m, MultiQueryAttention2d)]
    built = {id(m): m.key_dim for m in blocks}
    if not fused:
        _unfused(model)
    assert _groups.analyse(model).frozen == {}
    assert_equivalent(model, 0.5, atol=1e-4, changes=0.01)
    assert all(m.key_dim == m.value_dim == m.key.proj.out_channels < built[id(m)] for m in blocks)


def test_macs_count_what_timm_runs():
    model = make("mobilenetv4_hybrid_micro")
    # timm's classifier is its ``Linear``, which Torch-Pruning's counter skips (``_trace._formula``)
    model.classifier = nn.Linear(model.classifier.in_features, 10)
    assert_counts_what_timm_runs(model, 0.3)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)
