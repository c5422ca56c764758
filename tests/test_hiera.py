"""Hiera's attention (``MaskUnitAttention``): within mask units in the first stages and global in
the last, its queries max-pooled where a stage begins, its head count kept as ``heads``. It was
not registered, its groups were probed by cutting one channel, which broke its reshapes, and
every attention was left whole."""
import torch
from timm.models import hiera

from conftest import assert_counts_what_timm_runs, assert_equivalent, inputs_for, lively, make, without_norms
from isoprune import _groups


def test_pruned_attention_computes_what_the_zeroed_one_does():
    model = without_norms(lively(make("hiera_micro")))
    attentions = [m for m in model.modules() if isinstance(m, hiera.MaskUnitAttention)]
    built = [(a.heads, a.head_dim) for a in attentions]
    assert any(a.use_mask_unit_attn for a in attentions) and any(a.q_stride > 1 for a in attentions)
    assert not _groups.analyse(model).frozen
    plan = assert_equivalent(model, 0.5, changes=0.05)
    assert {g.kind for g in plan.groups if len(g.keep) < g.channels} >= {"heads", "head_dim", "mlp"}
    for attn, (heads, dim) in zip(attentions, built):
        assert attn.head_dim < dim and attn.heads <= heads and attn.dim_out == attn.heads * attn.head_dim == attn.proj.in_features
        assert attn.qkv.out_features == 3 * attn.dim_out


def test_macs_count_what_timm_runs():
    model = make("hiera_micro")
    assert_counts_what_timm_runs(model, 0.3)
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)
