"""ResNeSt's split attention: a convolution's output in ``radix`` splits, summed for the attention,
whose ``fc2`` gives each split a weight per channel, laid out ``[cardinality, radix, channels]``;
the softmax over the radix couples a channel's splits. A channel goes with all its splits and all
its weights, and with cardinality 2 the same positions go in both groups of the grouped layers."""
import pytest
import torch
from timm.layers import split_attn

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, make
from isoprune import _groups, _zoo

MODELS = ["resnest_micro", "resnest_4s2x_micro"]  # radix 2, cardinality 1; radix 4, cardinality 2


def _attentions(model):
    return [m for m in model.modules() if isinstance(m, split_attn.SplitAttn)]


@pytest.mark.parametrize("name", MODELS)
def test_trace_forward_computes_what_timm_does(name):
    attention = _attentions(make(name))[0]
    x = torch.randn(2, attention.conv.in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(_zoo.split_attention_trace(attention, x), attention(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_channels_lose_their_splits_and_weights_as_zeroing_them_does(name):
    model = make(name)
    built = [a.conv.out_channels for a in _attentions(model)]
    assert _groups.analyse(model).frozen == {}  # before, the attention's channels were left whole
    assert_equivalent(model, 0.5, changes=0.02)
    for a, width in zip(_attentions(model), built):
        assert a.conv.out_channels == a.fc2.out_channels == a.radix * a.fc1.in_channels < width


@pytest.mark.parametrize("name", MODELS)
def test_macs_count_what_timm_runs(name):
    model = make(name)
    assert_counts_what_timm_runs(model, 0.3)
    with torch.no_grad():
        assert model(torch.randn(1, *isoprune._trace.input_size(model))).shape == (1, 10)
