"""EfficientViM's hidden-state mixer (``HSMSSD``): the tokens are contracted into state dims (a
state dim is a channel of the input-dependent B, C and dt, of the depthwise convolution over the
three, and of the learned A), the channels are mixed on the states by a gated projection, and read
back out to the tokens through C. The tracer read timm's reshape of the tokens into states as
channels mapped onto thousands and left nearly every group whole; traced with the states detached
where they meet the channels (``_zoo.hidden_state_mixer_trace``), the stream, the gated projection's
hidden units and the state dims are each cut."""
import copy

import torch
from timm.models import efficientvim

import isoprune
from conftest import assert_counts_what_timm_runs, inputs_for, layernorm_free, lively, make
from isoprune import _groups


def _mixers(model):
    return [m for m in model.modules() if isinstance(m, efficientvim.HSMSSD)]


def test_state_dims_are_a_group_of_their_own():
    model = make("efficientvim_micro")
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    states = [g for g in analysis.groups if g.root.endswith("mixer.dw.conv")]
    assert len(states) == len(_mixers(model)) == 4
    for g in states:  # B, C and dt: three runs of the same state dims, with A
        owner = g.root.rsplit(".", 2)[0]
        assert g.blocks == 3 and g.channels == model.get_submodule(owner).state_dim
        assert {f"{owner}.A", f"{owner}.BCdt_proj.conv"} <= {n for n, _ in g.members}


def test_pruned_mixer_computes_what_the_zeroed_one_does():
    """The state dims, the gated projection's hidden units and the FFNs' (the stream lies under
    LayerNorms, where removing is not zeroing). The feature map is compared: the head also
    averages the hidden states over their state dims, which a pruned model averages over fewer."""
    model = lively(make("efficientvim_micro"))
    x = inputs_for(model)
    plan = isoprune.plan(model, layernorm_free(model, 0.5))
    zeroed = isoprune.zero_out(copy.deepcopy(model), plan)
    with torch.no_grad():
        before = model.forward_features(x)[-1]
    isoprune.apply_plan(model, plan)
    with torch.no_grad():
        got, expected = model.forward_features(x)[-1], zeroed.forward_features(x)[-1]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert (got - before).abs().max() > 0.01
    for m in _mixers(model):
        assert m.state_dim == m.A.shape[0] == m.dw.conv.out_channels // 3 == m.BCdt_proj.conv.out_channels // 3
        assert 2 * m.d_inner == m.hz_proj.conv.out_channels
    assert any(m.state_dim < built for m, built in zip(_mixers(model), (12, 7, 7, 5)))
    with torch.no_grad():
        assert model(x).shape == (2, 10)


def test_macs_count_what_timm_runs():
    assert_counts_what_timm_runs(make("efficientvim_micro"), 0.3)
