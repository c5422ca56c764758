"""ECA (and its circular variant, CECA): a gate per channel from a 1-d convolution that slides
along the channels' means. The tracer read the views around that convolution as one channel
mapped onto all, and ECA-ResNets, ECA-NFNets and ECA-VoVNet were left with their stage widths
whole. A pruned gate slides over the kept channels only (channels next to a removed one get new
neighbours), so it is checked to run, shrink and count, not to equal the zeroed model."""
import pytest
import torch
from timm.layers import eca

import isoprune
from conftest import assert_counts_what_timm_runs, inputs_for, make
from isoprune import _groups, _zoo

MODELS = ["ecaresnet_micro", "cecaresnet_micro"]


def _gates(model):
    return [m for m in model.modules() if isinstance(m, (eca.EcaModule, eca.CecaModule))]


@pytest.mark.parametrize("name", MODELS)
def test_trace_forward_computes_what_timm_does(name):
    gate = _gates(make(name))[-1]
    x = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(_zoo.channel_conv_gate_trace(gate, x), gate(x))


@pytest.mark.parametrize("name", MODELS)
def test_gated_stage_widths_are_cut(name):
    model = make(name)
    kernels = [g.conv.weight.clone() for g in _gates(model)]
    features = model.num_features
    assert not _groups.analyse(model).frozen
    isoprune.prune(model, 0.5)
    assert all(torch.equal(g.conv.weight, k) for g, k in zip(_gates(model), kernels))  # a kernel holds no channel
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert model.get_classifier().in_features == last.out_channels < features
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)


@pytest.mark.parametrize("name", MODELS)
def test_macs_count_what_timm_runs(name):
    assert_counts_what_timm_runs(make(name), 0.3)
