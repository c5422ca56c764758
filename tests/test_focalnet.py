"""FocalNet: one 1x1 convolution ``f`` makes the modulation's queries, its context and one gate per
focal level and for the global context. Each gate is one channel, broadcast over every context
channel, and read by position: the gates keep every channel, the queries and the context are cut."""
import pytest
import torch
from timm.models import focalnet

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, layernorm_free, lively
from isoprune import _groups

LARGE = dict(use_post_norm=True, use_post_norm_in_modulation=True, use_overlap_down=True, layerscale_value=0.5, normalize_modulator=True)
"""What FocalNet-L/XL/H add: norms after the modulation and in it, layer scale, overlapping downsampling."""


def micro(seed: int = 0, **kw) -> focalnet.FocalNet:
    torch.manual_seed(seed)
    model = focalnet.FocalNet(embed_dim=16, depths=(1, 2), focal_levels=(2, 3), focal_windows=(3, 3), mlp_ratio=2, num_classes=10, **kw)
    model.pretrained_cfg = {"input_size": (3, 64, 64)}
    return lively(model.eval())


def modulations(model):
    return [blk.modulation for layer in model.layers for blk in layer.blocks]


@pytest.mark.parametrize("kw", [{}, LARGE], ids=["base", "large"])
def test_queries_and_context_are_cut_and_the_gates_kept(kw):
    model = micro(**kw)
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    roots = {g.root for g in analysis.groups}
    for name in (f"layers.{i}.blocks.{j}.modulation" for i, j in ((0, 0), (1, 0), (1, 1))):
        last = len(model.get_submodule(name).focal_layers) - 1
        assert {f"{name}.h", f"{name}.focal_layers.{last}.0"} <= roots  # the queries' and the context's
    dims = [m.h.in_channels for m in modulations(model)]
    assert_equivalent(model, layernorm_free(model, 0.5), changes=0.1)
    for m, dim in zip(modulations(model), dims):
        assert m.h.in_channels < dim
        assert m.h.out_channels == dim if kw else m.h.out_channels < dim  # a LayerNorm over the queries: left to the next test
        assert m.f.out_channels == m.h.out_channels + m.h.in_channels + m.focal_level + 1
        assert all(layer[0].out_channels == m.h.in_channels for layer in m.focal_layers)
        assert type(m) is isoprune._zoo.PrunedFocalModulation


@pytest.mark.parametrize("ratios", [0.3, isoprune.Ratios(default=0.0, overrides={"re:focal_layers": 0.5})], ids=["all", "context"])
def test_macs_count_what_timm_runs(ratios):
    model = micro(**LARGE)
    dims = [m.h.in_channels for m in modulations(model)]
    assert_counts_what_timm_runs(model, ratios)
    for m, dim in zip(modulations(model), dims):
        assert m.h.in_channels < dim
        assert m.h.out_channels < dim if isinstance(ratios, float) else m.h.out_channels == dim
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)
