"""CoaT's factorized attention with a convolutional relative position encoding
(``FactorAttnConvRelPosEnc``): the values' image tokens through depthwise convolutions, a window
size for each run of heads, times the queries. The encoding is one module a stage, shared by its
blocks' attention, so every block of a stage loses the same heads and head dims, and a window
whose heads all go is passed by. CoaT with parallel blocks did not trace (its concatenations of
the class token with the image tokens, its aggregating head); CoaT-Lite traced, but its attention,
cut as any layer, broke timm's reshape and was left whole."""
import torch
from timm.models import coat

import isoprune
from conftest import assert_counts_what_timm_runs, assert_equivalent, base_of, inputs_for, layernorm_free, lively, make, without_norms
from isoprune import _groups, _zoo


def _lively(name: str):
    """``lively`` and without LayerNorms, in double precision: the products of queries with keys
    and values and with the encoded values grow its activations to millions, and in single
    precision the shorter sums of a pruned layer round differently by more than a tolerance would
    allow."""
    return without_norms(lively(make(name))).double()


def _attentions(model, stage: int):
    return [m for m in model.modules() if isinstance(m, coat.FactorAttnConvRelPosEnc) and m.crpe is getattr(model, f"crpe{stage}")]


def test_a_stage_loses_the_same_heads_and_head_dims_in_every_block():
    model = _lively("coat_lite_micro")
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    attention = [g for g in analysis.groups if g.kind in ("heads", "head_dim")]
    assert len(attention) == 2 * 4  # one heads group and one head-dim group a stage, not a block
    ratios = isoprune.Ratios(emb=0.25, heads=0.5, head_dim=0.5, mlp=0.5)
    assert_equivalent(model, ratios, atol=1e-6, changes=0.01, inputs=inputs_for(model).double())
    for stage, built in zip(range(1, 5), (16, 32, 48, 64)):
        (qkv, proj, heads), = {(a.qkv.out_features, a.proj.in_features, a.num_heads) for a in _attentions(model, stage)}  # every block alike
        assert type(_attentions(model, stage)[0]) is _zoo.PrunedFactorAttnConvRelPosEnc
        assert heads == 4 and qkv == 3 * proj and proj < built
        crpe = getattr(model, f"crpe{stage}")
        assert type(crpe) is _zoo.PrunedConvRelPosEnc and sum(crpe.head_splits) == heads
        assert crpe.channel_splits == [conv.out_channels for conv in crpe.conv_list] == [n * proj // heads for n in crpe.head_splits]


def test_a_window_that_loses_all_its_heads_is_passed_by(tmp_path):
    model = _lively("coat_lite_micro")
    x = inputs_for(model).double()
    plan = assert_equivalent(model, isoprune.Ratios(heads=0.75), atol=1e-6, changes=0.01, inputs=x)  # 8 of 32 heads kept
    emptied = [stage for stage in range(1, 5) if 0 in getattr(model, f"crpe{stage}").head_splits]
    assert len(emptied) >= 3
    for stage in emptied:
        crpe = getattr(model, f"crpe{stage}")
        assert sum(crpe.head_splits) == _attentions(model, stage)[0].num_heads < 8
        assert crpe.window == dict(zip((3, 5, 7), crpe.head_splits))
    assert isoprune.plan(model, 0.0, example_inputs=x).macs["after"] == plan.macs["after"]  # the pruned model traces again
    model = isoprune.prune(make("coat_lite_micro"), isoprune.Ratios(heads=0.75))  # as a user saves and loads one
    loaded = isoprune.load(isoprune.save(model, tmp_path / "m", base=base_of("coat_lite_micro")))
    x = inputs_for(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x))
    assert [c.head_splits for c in (loaded.crpe1, loaded.crpe2)] == [c.head_splits for c in (model.crpe1, model.crpe2)]


def test_parallel_blocks_trace_and_cut():
    model = lively(make("coat_micro"))  # with its norms: without, six parallel blocks overflow
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    streams = [g for g in analysis.groups if any(n == "parallel_blocks.0.mlp2.fc1" for n, _ in g.members)]
    assert len(streams) == 2  # the shared MLP's hidden units, and the input it shares with scales 2-4
    assert_equivalent(model, layernorm_free(model, 0.5), atol=1e-5, changes=0.01)
    model = isoprune.prune(make("coat_micro"), 0.5)  # the streams too
    assert model.serial_blocks2[0].mlp.fc2.out_features == model.serial_blocks4[0].mlp.fc2.out_features < 32
    assert model.aggregate.in_channels == 3
    with torch.no_grad():
        assert model(inputs_for(model)).shape == (2, 10)


def test_macs_count_what_timm_runs():
    for name in ("coat_lite_micro", "coat_micro"):
        model = make(name)
        assert_counts_what_timm_runs(model, 0.3)
        with torch.no_grad():
            assert model(inputs_for(model)).shape == (2, 10)
