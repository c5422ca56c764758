"""ResNeSt's split attention: a convolution's output in ``radix`` splits, summed for the attention,
whose ``fc2`` gives each split a weight per channel, laid out ``[cardinality, radix, channels]``;
the softmax over the radix couples a channel's splits. A channel goes with all its splits and all
its weights, and with cardinality 2 the same positions go in both groups of the grouped layers.
SKNet's selective kernel is the same attention over paths with different kernels (each on a part
of the input in SKNet-18/34, whose parts timm splits in halves; grouped in SKResNeXt)."""
import pytest
import torch
from timm.layers import selective_kernel, split_attn

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


@pytest.mark.parametrize("name", ["skresnet_micro", "skresnext_micro"])
def test_selective_kernel_paths_lose_channels_as_zeroing_them_does(name):
    model = make(name)
    kernels = [m for m in model.modules() if isinstance(m, selective_kernel.SelectiveKernel)]
    assert not _groups.analyse(model).frozen  # before, the paths' outputs were left whole
    assert_equivalent(model, 0.5, changes=0.02)
    for sk in kernels:
        widths = {path.conv.out_channels for path in sk.paths}
        assert type(sk) is _zoo.PrunedSelectiveKernel and len(widths) == 1
        assert sk.attn.fc_select.out_channels == sk.num_paths * widths.pop()
        assert all(path.conv.out_channels % path.conv.groups == 0 for path in sk.paths)
    if kernels[0].split_input:  # the parts of the input are cut apart
        assert any(len({path.conv.in_channels for path in sk.paths}) > 1 for sk in kernels)


@pytest.mark.parametrize("name", [*MODELS, "skresnet_micro", "skresnext_micro"])
def test_macs_count_what_timm_runs(name):
    model = make(name)
    assert_counts_what_timm_runs(model, 0.3)
    with torch.no_grad():
        assert model(torch.randn(1, *isoprune._trace.input_size(model))).shape == (1, 10)
