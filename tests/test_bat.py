"""BAT's bilinear attention transform (timm's ``bat_resnext26ts``): a reduction layer and two
convolutions make, for each group of the map's channels, a matrix that mixes its rows and one that
mixes its columns. Those layers' outputs weigh positions, not channels: traced as ``held``, their
inputs are cut with the map's channels and their outputs stay whole. The map's channels are split
into the groups evenly, so the layer that makes them keeps them in runs, one a group."""
from timm.layers.non_local_attn import BatNonLocalAttn

from conftest import assert_equivalent, make
from isoprune import _groups


def test_the_transform_s_channels_are_cut_alike_in_every_group_and_its_matrices_stay():
    model = make("bat_resnext26ts")
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    bats = {n: m for n, m in model.named_modules() if isinstance(m, BatNonLocalAttn)}
    outputs = {n for g in analysis.groups for n, d in g.members if d == "out"}
    for name, bat in bats.items():
        inner = next(g for g in analysis.groups if g.root == f"{name}.conv1.conv")
        assert inner.blocks == bat.ba.groups == 2 and inner.channels == bat.ba.in_channels // 2
        assert {(f"{name}.ba.conv1.conv", "in"), (f"{name}.ba.conv2.conv", "in")} <= set(inner.members)
        assert not outputs & {f"{name}.ba.conv1.conv", f"{name}.ba.conv_p", f"{name}.ba.conv_q"}

    before = {name: (bat.ba.in_channels, bat.ba.conv_p.out_channels) for name, bat in bats.items()}
    assert_equivalent(model, 0.4, changes=0.01)
    for name, bat in bats.items():
        width, matrices = before[name]
        assert bat.conv1.conv.out_channels == bat.ba.conv2.conv.in_channels < width and width % 2 == 0 == bat.ba.conv2.conv.in_channels % 2
        assert bat.ba.conv1.conv.out_channels == 2 and bat.ba.conv_p.out_channels == bat.ba.conv_q.out_channels == matrices
