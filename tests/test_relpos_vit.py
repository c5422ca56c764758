"""ViTs with a relative position bias (timm's ``vit_relpos``): timm's attention plus a bias per
head from a table (``RelPosBias``) or an MLP (``RelPosMlp``), which the tracer coupled to the
embedding, so every attention was left whole; with one bias shared across blocks
(``vit_srelpos``) the heads must stay, and the head dims are still cut."""
import pytest
import torch
from timm.models.vision_transformer_relpos import RelPosAttention

from conftest import assert_counts_what_timm_runs, assert_equivalent, lively, make, without_norms
from isoprune import _groups, _zoo


@pytest.mark.parametrize("name", ["vit_relpos_micro", "vit_relpos_mlp_micro"])
def test_pruned_attention_computes_what_the_zeroed_one_does(name):
    model = without_norms(lively(make(name)))
    attentions = [m for m in model.modules() if isinstance(m, RelPosAttention)]
    assert not _groups.analyse(model).frozen
    plan = assert_equivalent(model, 0.5, changes=0.05)
    assert {g.kind for g in plan.groups if len(g.keep) < g.channels} == {"emb", "heads", "head_dim", "mlp"}
    for attn in attentions:
        assert type(attn) is _zoo.PrunedRelPosAttention and attn.num_heads == 2
        assert attn.rel_pos.get_bias().shape[-3] == 2


def test_shared_bias_keeps_the_heads():
    model = without_norms(lively(make("vit_srelpos_micro")))
    assert not _groups.analyse(model).frozen
    plan = assert_equivalent(model, 0.5, changes=0.05)
    cut = {g.kind for g in plan.groups if len(g.keep) < g.channels}
    assert "heads" not in cut and "head_dim" in cut
    assert all(m.num_heads == 4 for m in model.modules() if isinstance(m, RelPosAttention))


@pytest.mark.parametrize("name", ["vit_relpos_micro", "vit_relpos_mlp_micro", "vit_srelpos_micro"])
def test_macs_count_what_timm_runs(name):
    model = make(name)
    assert_counts_what_timm_runs(model, 0.3)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
