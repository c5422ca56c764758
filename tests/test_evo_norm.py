"""EvoNorm's sample variants (timm's ``EvoNorm2dS*``: ResNetV2-50d-EvoS, RegNetZ-EvoS,
EfficientNet-EvoS, VoVNet-EvoS): each channel is divided by a statistic of its group of channels.
The tracer read timm's reshape to ``[groups, channels / groups]`` as channels mapped onto others
and left every layer before such a norm whole; now the statistic stays out of the trace and each
group keeps as many channels as the others, at the same positions. A removed channel changes its
group's statistic, so the pruned model is checked to keep the groups, run and count, not to equal
the zeroed one."""
import pytest
import torch
from timm.layers import evo_norm

import isoprune
from conftest import assert_counts_what_timm_runs, inputs_for, make
from isoprune import _groups

MODELS = ["test_efficientnet_evos", "resnetv2_evos_micro", "regnetz_evos_micro"]  # S0 in 8 and 32 groups, S0a in groups of 16


def _norms(model):
    return [m for m in model.modules() if isinstance(m, (evo_norm.EvoNorm2dS0, evo_norm.EvoNorm2dS1, evo_norm.EvoNorm2dS2))]


@pytest.mark.parametrize("name", MODELS)
def test_groups_keep_their_channels_at_the_same_positions(name):
    model = make(name)
    norms = _norms(model)
    widths = [norm.weight.numel() for norm in norms]
    with torch.no_grad():  # each weight names its channel: group * 1000 + position in the group
        for norm in norms:
            width = norm.weight.numel() // norm.groups
            norm.weight.copy_(torch.arange(norm.weight.numel()) // width * 1000 + torch.arange(norm.weight.numel()) % width)
    assert not _groups.analyse(model).frozen
    isoprune.prune(model, 0.5)
    for norm in norms:
        kept = norm.weight.detach().long().view(norm.groups, -1)  # fails unless every group keeps as many
        assert (kept // 1000 == torch.arange(norm.groups)[:, None]).all()
        assert (kept % 1000 == kept[:1] % 1000).all()  # the same positions in every group
    assert sum(norm.weight.numel() for norm in norms) < sum(widths)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)


def test_macs_count_what_timm_runs():
    assert_counts_what_timm_runs(make("test_efficientnet_evos"), 0.3)
