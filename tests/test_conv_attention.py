"""LowFormer's and CPUBone's attention: a strided depthwise convolution of the map, then a 1x1
convolution laying out its heads a head at a time (``[heads, (q, k, v), head_dim]``), attention
over the reduced map, and a transposed convolution back up (in the models here it takes the
attention's output itself: the output projection is folded into it). It was not registered, so
the 1x1 convolution was cut as any layer's, which broke timm's reshape to its heads, and every
attention was left whole; now its heads and head dims are cut."""
import pytest
import torch
from timm.models import cpubone, lowformer

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, make, without_norms
from isoprune import _groups, _zoo

MODELS = ["lowformer_micro", "cpubone_micro"]


def _attention(model):
    return [m for m in model.modules() if isinstance(m, (lowformer.ConvAttention, cpubone.ConvAttention))]


@pytest.mark.parametrize("name", MODELS)
def test_pruned_attention_computes_what_the_zeroed_one_does(name):
    model = lively(make(name))
    assert not _groups.analyse(model).frozen
    plan = assert_equivalent(model, isoprune.Ratios(heads=0.5, head_dim=0.5), changes=0.01)
    assert {g.kind for g in plan.groups if g.owner and len(g.keep) < g.channels} == {"heads", "head_dim"}
    attention = _attention(model)
    for attn in attention:
        assert type(attn) in (_zoo.PrunedLowFormerAttention, _zoo.PrunedCPUBoneAttention)
        assert attn.pwise.out_channels == 3 * attn.o_proj_inpdim == 3 * attn.num_heads * attn.head_dim
    assert sum(a.num_heads * a.head_dim for a in attention) < sum(a.num_heads * a.head_dim for a in _attention(make(name))) / 2


@pytest.mark.parametrize("name", MODELS)
def test_every_group_prunes(name):
    # GroupNorm1 (one group over every channel) and the head's LayerNorm: removing a channel changes their statistics
    model = without_norms(lively(make(name)), (torch.nn.GroupNorm, torch.nn.LayerNorm))
    assert_equivalent(model, 0.5, atol=1e-4, changes=0.05)


@pytest.mark.parametrize("name", MODELS)
def test_forward_computes_what_timm_does(name):
    for attn in _attention(make(name))[:2]:
        x = torch.randn(2, attn.pwise.in_channels, 7, 7)  # odd: CPUBone pads its reduced projection
        with torch.no_grad():
            torch.testing.assert_close(_zoo._conv_attention(attn, x, trace=False), attn(x), atol=1e-5, rtol=1e-5)
            assert _zoo._conv_attention(attn, x, trace=True).shape == attn(x).shape


def test_macs_count_what_timm_runs():
    # not LowFormer's: its head's timm ``Linear`` (a subclass) Torch-Pruning's counter skips, and isoprune counts (``_trace._formula``)
    model = make("cpubone_micro")
    assert_counts_what_timm_runs(model, 0.3)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)
