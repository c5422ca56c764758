"""Depth pruning and budget search."""
import pytest
import torch

import isoprune
from conftest import inputs_for, make


def test_depth_removes_least_important_blocks():
    model = make("test_convnext")
    blocks = model.stages[2].blocks
    with torch.no_grad():  # make block 0 clearly the least important by magnitude
        for p in blocks[0].parameters():
            p.mul_(1e-3)
    plan = isoprune.plan(model, 0.0, depth={"stages.2.blocks": 1})
    assert plan.depth == [{"container": "stages.2.blocks", "blocks": len(blocks), "keep": list(range(1, len(blocks)))}]
    assert plan.macs["after"] < plan.macs["before"]
    isoprune.apply_plan(model, plan)
    assert model(inputs_for(model)).shape == (2, 10)
    assert isoprune.count(model) == (plan.macs["after"], plan.params["after"])


def test_depth_keeps_shape_changing_blocks():
    with pytest.raises(isoprune.IsopruneError, match="keep their shape"):
        isoprune.plan(make("resnet18"), 0.0, depth={"layer2": 2})
    with pytest.raises(isoprune.IsopruneError, match="no block container"):
        isoprune.plan(make("resnet18"), 0.0, depth={"layer9": 1})


@pytest.mark.parametrize("name,budget", [("test_vit", "0.02G"), ("test_resnet", "0.1G"), ("test_convnext", "params=0.12M")])
def test_budget_lands_within_one_percent_under(name, budget):
    model = make(name)
    target = isoprune.Budget.parse(budget)
    plan = isoprune.plan(model, 0.0, budget=budget)
    reached = getattr(plan, target.metric)["after"]
    assert 0.99 * target.value <= reached <= target.value
    assert plan.search["metric"] == target.metric and plan.search["scale"] > 0
    isoprune.apply_plan(model, plan)
    assert isoprune.count(model)[0 if target.metric == "macs" else 1] == reached


def test_budget_keeps_the_ratio_shape():
    plan = isoprune.plan(make("test_vit"), {"mlp": 0.5, "heads": 0.0}, budget="0.025G")
    assert plan.ratios["heads"] == 0.0 and plan.ratios["mlp"] > 0
    assert all(len(g.keep) == g.channels for g in plan.groups if g.kind == "heads")


@pytest.mark.parametrize("budget,message", [("9G", "not below"), ("macs=100K", "out of reach"), ("4.2X", "cannot read budget")])
def test_budget_errors(budget, message):
    with pytest.raises(isoprune.IsopruneError, match=message):
        isoprune.plan(make("test_resnet"), 0.0, budget=budget)


def test_budget_parse():
    assert isoprune.Budget.parse("4.2G") == isoprune.Budget("macs", 4_200_000_000)
    assert isoprune.Budget.parse("20M") == isoprune.Budget("params", 20_000_000)
    assert isoprune.Budget.parse("macs=800M") == isoprune.Budget("macs", 800_000_000)
