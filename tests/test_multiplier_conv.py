"""Depthwise convolutions with a channel multiplier (as many groups as inputs, ``m`` outputs per
group: PiT's pooling, FastViT's downsampling): an input channel goes with its group's ``m``
outputs, so the widths before and after are one group, and the convolution loses whole groups."""
import torch
from torch import nn

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, make, without_norms
from isoprune import _groups


class Widening(nn.Module):
    """4 channels, each widened to 2 by a depthwise convolution, then mixed."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.widen = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Linear(6, 10)
        self.pretrained_cfg = {"input_size": (3, 8, 8)}

    def forward(self, x):
        return self.head(self.mix(self.widen(self.stem(x))).mean((2, 3)))


def test_an_input_goes_with_its_group_of_outputs():
    torch.manual_seed(0)
    model = Widening().eval()
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    (group,) = [g for g in analysis.groups if ("widen.0", "in") in g.members]
    assert group.channels == 4 and group.blocks == 1  # a unit: one channel before, its two after
    assert {("stem.0", "out"), ("widen.0", "out"), ("mix.0", "in")} <= set(group.members)
    plan = assert_equivalent(model, 0.5, changes=0.01)
    conv = model.widen[0]
    assert conv.in_channels == conv.groups == model.stem[0].out_channels == 2 and conv.out_channels == 4
    assert {g.kind for g in plan.groups if len(g.keep) < g.channels} == {"channels"}


def test_pit_stages_are_one_embedding():
    """PiT's pooling widens each stage's embedding 2x: all three are one group, with the
    position embedding (``[1, channels, height, width]``) cut along its channels."""
    model = lively(without_norms(make("pit_micro")))
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    (embedding,) = [g for g in analysis.groups if g.kind == "emb"]
    assert embedding.channels == 8 and ("transformers.2.pool.conv", "out") in embedding.members
    assert_equivalent(model, 0.5, changes=0.1)
    pools = [model.transformers[1].pool.conv, model.transformers[2].pool.conv]
    assert [(p.in_channels, p.groups, p.out_channels) for p in pools] == [(4, 4, 8), (8, 8, 16)]  # built (8, 8, 16), (16, 16, 32)
    assert model.patch_embed.conv.out_channels == 4 and model.pos_embed.shape == (1, 4, 7, 7) and model.head.in_features == 16


def test_fastvit_stages_lose_channels():
    model = make("fastvit_micro")
    built = [stage.blocks[0].mlp.fc2.out_channels for stage in model.stages]
    assert _groups.analyse(model).frozen == {}
    isoprune.prune(model, 0.3)
    assert all(stage.blocks[0].mlp.fc2.out_channels < width for stage, width in zip(model.stages, built))
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)


def test_macs_count_what_timm_runs():
    for name in ("pit_micro", "fastvit_micro"):
        assert_counts_what_timm_runs(make(name), 0.3)
