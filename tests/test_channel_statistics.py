"""CSATv2's spatial attention weighs every position of the map from its mean and maximum over the
channels, through a convolution and a one-channel transformer. Multiplied into the map, the tracer
coupled its one channel to all the map's and left every stage with such blocks whole, and the stem's
convolutions with them. Traced detached (``_zoo.channel_statistics_attention_trace``), it joins no
group: the map's channels are cut around it, and its own layers keep their one or two channels."""
import torch
from timm.models.csatv2 import SpatialAttention

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, make
from isoprune import _groups


def test_every_stage_is_cut_and_the_spatial_attention_stays_whole():
    model = make("csatv2_micro")
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    spatial = {f"{name}." for name, m in model.named_modules() if isinstance(m, SpatialAttention)}
    members = [n for g in analysis.groups for n, _ in g.members]
    assert spatial and not any(n.startswith(tuple(spatial)) for n in members)
    assert {"emb", "mlp", "heads", "head_dim"} <= {g.kind for g in analysis.groups}
    isoprune.prune(model, 0.5)
    widths = [next(b for b in stage if hasattr(b, "pwconv2")).pwconv2.out_features for stage in model.stages]  # each stage's stream
    assert all(w < built for w, built in zip(widths, (16, 24, 32, 48)))
    assert all(m.conv.in_channels == 2 and m.attn.qkv.in_features == 1 for m in model.modules() if isinstance(m, SpatialAttention))
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)


def test_pruned_attention_computes_what_the_zeroed_one_does():
    model = lively(make("csatv2_micro"))  # heads and head dims: no norm spans them
    assert_equivalent(model, isoprune.Ratios(heads=0.5, head_dim=0.5), atol=1e-4, changes=0.01)


def test_macs_count_what_timm_runs():
    assert_counts_what_timm_runs(make("csatv2_micro"), 0.3)
