"""Parallel ViT blocks (ViT-22B's, timm ``ParallelScalingBlock``; ``DiffParallelScalingBlock`` with
differential attention) run attention and MLP side by side: one projection, ``in_proj``, holds the
MLP's hidden units and then the queries, keys and values, and the two results leave through one
output projection or two. Its traced group holds both kinds, so it yields three groups: the hidden
units (``mlp``), and heads and head dims read ``Layout.offset`` channels past them. The tracer
coupled timm's reshapes onto channels the layers do not have and left every block whole."""
import functools

import pytest
from timm.models.vision_transformer import DiffParallelScalingBlock, ParallelScalingBlock

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, assert_saved_and_applied_again, lively, make
from isoprune import _groups

MODELS = ["vit_parallel_micro", "vit_parallel_qk_norm_micro", "vit_parallel_diff_micro"]
RATIOS = isoprune.Ratios(heads=0.5, head_dim=0.5, mlp=0.5)  # no norm spans these: pruned == zeroed


def blocks(model):
    return [m for m in model.modules() if isinstance(m, (ParallelScalingBlock, DiffParallelScalingBlock))]


@pytest.mark.parametrize("name", MODELS)
def test_a_block_yields_hidden_units_heads_and_head_dims(name):
    model = make(name)
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    for i, block in enumerate(blocks(model)):
        groups = {g.kind: g for g in analysis.groups if g.root == f"blocks.{i}.in_proj"}
        assert sorted(groups) == ["head_dim", "heads", "mlp"]
        assert len({analysis.source[g.id] for g in groups.values()}) == 1  # one traced group
        assert (groups["mlp"].channels, groups["heads"].channels) == (block.in_split[0], block.num_heads)
        assert analysis.attention[f"blocks.{i}"].offset == block.in_split[0]
        fixed = groups["head_dim"].fixed
        assert (fixed is None) == (name == "vit_parallel_micro")  # qk-norm and differential attention normalise over head dims


@pytest.mark.parametrize("name", MODELS)
def test_pruned_blocks_compute_what_the_zeroed_ones_do(name):
    model = lively(make(name))
    plan = assert_equivalent(model, RATIOS, atol=1e-4, changes=0.01)
    block = blocks(model)[0]
    hidden, width = block.in_split[:2]
    assert block.in_proj.out_features == hidden + 3 * width and width == block.num_heads * (block.head_dim * (1 + isinstance(block, DiffParallelScalingBlock)))
    assert hidden < 320 and block.num_heads < 4
    assert plan.macs["after"] < plan.macs["before"]


@pytest.mark.parametrize("kwargs", [dict(block_fn=functools.partial(ParallelScalingBlock, fuse_out_proj=True)), dict(qkv_bias=True)],
                         ids=["one output projection", "qkv bias"])
def test_variants_of_the_block(kwargs):
    """One output projection for both results (attention first); the MLP's bias in ``in_proj``'s
    (none of its own)."""
    model = lively(make("vit_parallel_micro", **kwargs))
    assert_equivalent(model, RATIOS, atol=1e-4, changes=0.01)


def test_head_dims_cut_keep_the_attention_scaled():
    """A head-dim cut changes the fused path's default scale: ``scale`` is set to the new head dim's
    and the old ratio folded into the query rows of ``in_proj``, past the hidden units."""
    model = lively(make("vit_parallel_micro"))
    assert_equivalent(model, isoprune.Ratios(head_dim=0.5), atol=1e-4, changes=0.01, scope="local")
    assert all(b.head_dim == 8 and b.scale == 8 ** -0.5 for b in blocks(model))


@pytest.mark.parametrize("name", MODELS)
def test_macs_count_what_timm_runs(name):
    assert_counts_what_timm_runs(make(name), 0.3)


def test_a_pruned_model_and_its_plan_load_again(tmp_path):
    assert_saved_and_applied_again("vit_parallel_micro", isoprune.Ratios(emb=0.25, heads=0.5, head_dim=0.25, mlp=0.5), tmp_path)
