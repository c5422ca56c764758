"""PVT-v2's and Twins' attention: keys and values from a spatially reduced map (a ``kv``
projection holding both, beside ``q``; PVT-v2's linear attention pools the map first), and
Twins' attention within windows."""
import copy

import pytest
import torch
import torch_pruning as tp
from timm.models import pvt_v2, twins

import isoprune
from conftest import assert_equivalent, inputs_for, layernorm_free, lively, make
from isoprune import _groups

MODELS = ["pvt_v2_micro", "pvt_v2_linear_micro", "twins_svt_micro"]
REDUCTION = (pvt_v2.Attention, twins.GlobalSubSampleAttn)


def attentions(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, (*REDUCTION, twins.LocallyGroupedAttn))}


@pytest.mark.parametrize("name", MODELS)
def test_pruned_attention_computes_what_the_zeroed_one_does(name):
    model = lively(make(name))
    assert _groups.analyse(model).frozen == {}
    modules = attentions(model)
    kinds = {type(m).__mro__[0] for m in modules.values()}
    plan = assert_equivalent(model, layernorm_free(model, 0.5), changes=0.1)
    assert {"heads", "head_dim", "mlp", "emb"} <= {g.kind for g in plan.groups}
    cut = {g.owner for g in plan.groups if g.kind == "heads" and len(g.keep) < g.channels}
    assert {type(modules[owner]).__mro__[1] for owner in cut} == kinds  # every kind of attention lost heads
    for attn in modules.values():
        width = attn.proj.in_features
        assert width % attn.num_heads == 0
        if isinstance(attn, REDUCTION):
            assert attn.q.out_features == width and attn.kv.out_features == 2 * width
        else:
            assert attn.qkv.out_features == 3 * width


def test_windows_are_padded_where_they_do_not_divide_the_map():
    """At 80 px the first stage's 20x20 map is padded to 21x21 for Twins' 7x7 windows."""
    model = lively(make("twins_svt_micro"))
    x = torch.randn(2, 3, 80, 80)
    plan = isoprune.plan(model, layernorm_free(model, 0.5), example_inputs=x)
    zeroed = isoprune.zero_out(copy.deepcopy(model), plan, x)
    isoprune.apply_plan(model, plan, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), zeroed(x), atol=1e-5, rtol=0)
    x = x[:1]  # and its qkv is counted over the padded map, its output projection over the map's own
    assert isoprune.count(model, x)[0] == tp.utils.count_ops_and_params(model, x)[0]


@pytest.mark.parametrize("name", MODELS)
def test_macs_count_what_timm_runs(name):
    model = make(name)
    assert isoprune.count(model)[0] == tp.utils.count_ops_and_params(model, inputs_for(model, 1))[0]


@pytest.mark.parametrize("name", MODELS)
def test_the_reduced_map_loses_channels_too(name):
    """The reduction's convolution and norm form their own group (what keys and values are
    computed from): cut at the default ratio, the model still runs."""
    model = make(name)
    widths = {n: m.sr.out_channels for n, m in attentions(model).items() if getattr(m, "sr", None) is not None}
    isoprune.prune(model, 0.5)
    assert model(inputs_for(model)).shape == (2, 10)
    assert widths and all(model.get_submodule(n).sr.out_channels < w for n, w in widths.items())
