"""SHViT's single-head attention (``SHSA``): on the first channels of the map (the rest pass by
it), its query and key narrower than its values, its output concatenated with the channels that
passed by. The tracer could not follow timm's reshape, and no SHViT traced. Now each query and
key channel is cut with a value channel, the other values on their own
(``_zoo._single_head_self_attention``), and the pruned forward splits the map, the qkv and the
values at the widths its layers have."""
import torch
from timm.models import shvit
from torch import nn

from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, make, without_norms
from isoprune import _groups, _zoo


def _attentions(model):
    return [m for m in model.modules() if isinstance(m, shvit.SHSA)]


def test_pruned_attention_computes_what_the_zeroed_one_does():
    model = without_norms(lively(make("shvit_micro")), (nn.GroupNorm,))  # the attention's GroupNorm over its channels: removing is not zeroing
    built = [(a.qkv.c.in_channels, a.qk_dim, a.proj[1].c.in_channels) for a in _attentions(model)]
    assert _groups.analyse(model).frozen == {}
    assert_equivalent(model, 0.5, atol=1e-4, changes=0.01)
    widths = []
    for a, (read, paired, stream) in zip(_attentions(model), built):
        assert type(a) is _zoo.PrunedSHSA
        values = a.proj[1].c.in_channels - (a.proj[1].c.out_channels - a.qkv.c.in_channels)  # the rest passed by
        assert a.qkv.c.in_channels < read and a.proj[1].c.in_channels < stream
        widths.append(((a.qkv.c.out_channels - values) // 2, values))
    assert any(query < paired for (query, _), (_, paired, _) in zip(widths, built))
    assert all(values >= query for query, values in widths)


def test_macs_count_what_timm_runs():
    model = make("shvit_micro")
    assert_counts_what_timm_runs(model, 0.3)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)
