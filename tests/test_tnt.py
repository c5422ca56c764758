"""TNT: attention over a patch's pixels (inner) and over the patches (outer), each with its
queries and keys in one layer and its values in another; the pixel embedding, projected onto the
patch embedding with a patch's pixels side by side. Its attention was not registered (its
values were cut as any layer's, which broke timm's reshape to its heads), and the tracer mapped a
pixel channel onto one of the projection's inputs where it feeds one a pixel: every attention and
the pixel embedding were left whole. Now heads, head dims and the pixel embedding are cut."""
import pytest
import torch
from timm.models import tnt

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, lively, make, without_norms
from isoprune import _groups

MODELS = ["tnt_micro", "tnt_v2_micro"]  # timm's legacy pixel embedding (its projection before the unfold) and its current one


@pytest.mark.parametrize("name", MODELS)
def test_pruned_tnt_computes_what_the_zeroed_one_does(name):
    model = without_norms(lively(make(name)))
    assert not _groups.analyse(model).frozen
    plan = assert_equivalent(model, 0.5, atol=1e-4, changes=0.05)
    cut = {(g.owner.rsplit(".", 1)[-1], g.kind) for g in plan.groups if g.owner and len(g.keep) < g.channels}
    assert cut == {(attn, kind) for attn in ("attn_in", "attn_out") for kind in ("heads", "head_dim")}
    pixels = model.pixel_embed
    assert pixels.in_dim == pixels.proj.out_channels < 12
    for block in model.blocks:
        assert block.proj.in_features == 4 * pixels.in_dim  # 4 pixels a patch
        for attn in (block.attn_in, block.attn_out):
            assert attn.qk.out_features == 2 * attn.v.out_features == 2 * attn.num_heads * attn.head_dim


@pytest.mark.parametrize("name", MODELS)
def test_macs_count_what_timm_runs(name):
    assert_counts_what_timm_runs(make(name), 0.3)


def test_head_dims_are_cut_and_the_scale_stays_as_built():
    model = make("tnt_v2_micro")
    attention = [m for m in model.modules() if isinstance(m, tnt.Attention)]
    built = [(m.head_dim, m.scale) for m in attention]
    isoprune.prune(model, isoprune.Ratios(head_dim=0.5))
    assert all(m.head_dim < dim and m.scale == scale for m, (dim, scale) in zip(attention, built))  # timm's forward reads both
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
