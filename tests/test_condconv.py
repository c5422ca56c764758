"""CondConv EfficientNets (timm's ``efficientnet_cc_*``): each block's convolutions mix their
experts' kernels per sample, weighted by a routing layer on the block's pooled input. timm's
``CondConv2d`` keeps each expert's kernel flattened in one row of its weight; the tracer mapped
channels onto those rows' millions of entries and left the groups around them whole (19 of 47 in
``efficientnet_cc_b0_4e``). ``_cut.CondConvCut``
cuts a channel from every expert (a depthwise one's input with its output), ``_zoo.cond_conv_trace``
traces it as one convolution, its routing weights ``held``: the routing layer's inputs are cut with
the block's, its outputs (one per expert) never."""
import math

import pytest
import torch
from timm.layers import CondConv2d
from torch import nn

import isoprune
from conftest import assert_equivalent, assert_saved_and_applied_again, inputs_for, make
from isoprune import _groups, _importance


EXPANSION = "blocks.4.0.se.conv_expand"
"""The root of the group of the expansion channels of the first CondConv block (the fifth stage's first)."""


def cond_convs(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, CondConv2d)}


def test_every_group_is_cut_and_the_routing_keeps_its_experts():
    model = make("efficientnet_cc_micro")
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    members = {(name, d) for g in analysis.groups for name, d in g.members}
    for name, conv in cond_convs(model).items():
        assert (name, "out") in members and ((name, "in") in members or conv.groups > 1)  # a depthwise one's are its outputs
        block = name.rpartition(".")[0]
        assert (f"{block}.routing_fn", "in") in members and (f"{block}.routing_fn", "out") not in members
    expansion = next(g for g in analysis.groups if g.root == EXPANSION)  # the squeeze-excite's last layer roots it
    assert set(expansion.members) >= {("blocks.4.0.conv_pw", "out"), ("blocks.4.0.conv_dw", "out"), ("blocks.4.0.conv_pwl", "in")}


def test_pruned_cond_convs_compute_what_the_zeroed_ones_do():
    model = make("efficientnet_cc_micro")
    with torch.no_grad():  # routing weights far from the sigmoid's middle, so that the experts differ in what they add
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.out_features == 4:
                m.weight.normal_(0, 1)
    assert_equivalent(model, 0.3, changes=0.01)
    for name, conv in cond_convs(model).items():
        assert conv.weight_shape == (conv.out_channels, conv.in_channels // conv.groups, *conv.kernel_size)
        assert conv.weight.shape == (4, math.prod(conv.weight_shape))
        if name.endswith("conv_dw"):
            assert conv.groups == conv.in_channels == conv.out_channels
    assert len(cond_convs(model)) == 24 and model.blocks[4][0].conv_dw.out_channels < 480


def test_a_channel_scores_the_kernels_of_every_expert():
    """A CondConv's channel is scored on its rows in every expert (``member_tensors`` views the
    flattened kernels): the one channel whose kernels are made large is the one kept."""
    model = make("efficientnet_cc_micro")
    conv = model.blocks[4][0].conv_pw
    assert isinstance(conv, CondConv2d)
    with torch.no_grad():
        conv.weight.view(4, conv.out_channels, -1)[:, 7] *= 100
    plan = isoprune.plan(model, isoprune.Ratios(default=0.9))
    assert next(g for g in plan.groups if g.root == EXPANSION).keep == [7]


@pytest.mark.parametrize("groups", [1, 2, 8], ids=["dense", "grouped", "depthwise"])
@pytest.mark.parametrize("out", [True, False], ids=["outputs", "inputs"])
def test_one_expert_scores_as_the_convolution_it_is(groups, out):
    """A CondConv of one expert computes what a plain convolution with its kernel does, and its
    members score its channels alike (a depthwise one's bias once, with its outputs)."""
    torch.manual_seed(0)
    cond = CondConv2d(8, 8, 3, padding=1, groups=groups, num_experts=1, bias=True)
    plain = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=True)
    with torch.no_grad():
        cond.bias.normal_()
        plain.weight.copy_(cond.weight.view(cond.weight_shape))
        plain.bias.copy_(cond.bias.view(-1))
    x = torch.randn(1, 8, 4, 4)
    torch.testing.assert_close(cond(x, torch.ones(1, 1)), plain(x))  # the one expert at full weight

    def scores(module):
        sums = _importance._ChannelSums(_importance.get_importance("l2"), None)
        slots = _importance.member_tensors(module, "", param=False, out=out, dim=0)
        return sum(sums(s.tensor, s.dim) for s in slots) if slots else None

    expected = scores(plain)
    assert (expected is None) == (groups == 2 and not out)  # a grouped one's inputs are its outputs' members
    if expected is not None:
        torch.testing.assert_close(scores(cond), expected)


def test_a_view_of_the_kernels_is_scored_with_its_parameter_s_gradients():
    model = make("efficientnet_cc_micro")
    conv = model.blocks[4][0].conv_pw
    stats = _importance.calibrate(model, [(inputs_for(model), torch.tensor([1, 2]))], stats=("grad",))
    slot, = _importance.member_tensors(model, "blocks.4.0.conv_pw", param=False, out=True, dim=-1)
    assert slot.tensor.shape == (4, conv.out_channels, conv.in_channels, 1, 1) and slot.tensor._base is conv.weight
    expected = (conv.weight * stats["grad"][conv.weight]).abs().view(4, conv.out_channels, -1).sum((0, 2))
    assert expected.min() > 0
    torch.testing.assert_close(_importance._ChannelSums(_importance.get_importance("taylor"), stats)(slot.tensor, slot.dim), expected.double())


def test_cond_conv_macs_count_the_convolution_and_the_mixed_kernels():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.routing = nn.Conv2d(3, 8, 1), nn.Linear(8, 4)
            self.cond = CondConv2d(8, 16, 3, padding=1, num_experts=4, bias=True)

        def forward(self, x):
            x = self.stem(x)
            return self.cond(x, torch.sigmoid(self.routing(x.mean((2, 3))))).mean((2, 3))

    # per sample, as Torch-Pruning counts: a convolution's bias once per output, a linear layer's once a batch (of 2)
    stem, routing = 8 * 3 * 5 * 5 + 8 * 5 * 5, 8 * 4 + 4 // 2
    conv = 16 * 8 * 9 * 5 * 5 + 16 * 5 * 5
    mixed = 4 * (16 * 8 * 9 + 16)
    assert isoprune.count(Net(), torch.randn(2, 3, 5, 5))[0] == stem + routing + conv + mixed


def test_a_pruned_model_and_its_plan_load_again(tmp_path):
    assert_saved_and_applied_again("efficientnet_cc_micro", 0.3, tmp_path)
