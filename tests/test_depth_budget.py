"""Depth pruning and budget search."""
import pytest
import torch

import isoprune
from conftest import inputs_for, make, run_cli


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


def test_budget_fills_in_where_rounding_steps_the_widths(monkeypatch):
    """At ratio 0.5 with ``round_to=8``, MobileNetV2's stem, head and residual widths halve at one
    factor, and its MACs step by 9%: a budget inside the step is reached by taking some isomorphic
    groups, each whole, to the larger shape's widths."""
    from isoprune import _plan

    model, budget = make("mobilenetv2_100", num_classes=1000), 0.101e9
    plan = isoprune.plan(model, {"default": 0.27}, budget="0.101G", round_to=8)
    assert 0.99 * budget <= plan.macs["after"] <= budget
    filled = set(plan.search["filled"])
    assert filled and f"{len(filled)} isomorphic groups filled in" in plan.summary()
    isoprune.apply_plan(model, plan)
    assert isoprune.count(model)[0] == plan.macs["after"]
    assert model(inputs_for(model)).shape == (2, 1000)

    monkeypatch.setattr(_plan, "_fill", lambda under, *_: (under, [], 0))
    bare = isoprune.plan(make("mobilenetv2_100", num_classes=1000), {"default": 0.27}, budget="0.101G", round_to=8)
    assert bare.macs["after"] < 0.97 * budget  # the bisection alone stops at the step
    assert plan.search["bisected"] == bare.macs["after"]  # and the filled plan says where
    # the filled-in groups keep the next shape's widths, every other group the bare plan's
    wider = [(g, b) for g, b in zip(plan.groups, bare.groups) if len(g.keep) != len(b.keep)]
    assert wider and all(len(g.keep) > len(b.keep) and g.signature in filled for g, b in wider)
    assert all(g.keep == b.keep for g, b in zip(plan.groups, bare.groups) if g.signature not in filled)


def test_budget_fills_in_nothing_under_one_global_ranking():
    """One ranking over every group takes no isomorphic group alone: a step is left where the
    bisection found it."""
    plan = isoprune.plan(make("mobilenetv2_100", num_classes=1000), {"default": 0.27}, budget="0.104G", round_to=8, scope="global")
    assert plan.search["filled"] == [] and plan.macs["after"] < 0.99 * 0.104e9


def test_budget_keeps_the_ratio_shape():
    plan = isoprune.plan(make("test_vit"), {"mlp": 0.5, "heads": 0.0}, budget="0.025G")
    assert plan.ratios["heads"] == 0.0 and plan.ratios["mlp"] > 0
    assert all(len(g.keep) == g.channels for g in plan.groups if g.kind == "heads")


@pytest.mark.parametrize("budget,message", [("9G", "not below"), ("macs=100K", "out of reach"), ("4.2X", "cannot read budget")])
def test_budget_errors(budget, message):
    with pytest.raises(isoprune.IsopruneError, match=message):
        isoprune.plan(make("test_resnet"), 0.0, budget=budget)


def test_an_unreachable_budget_asks_for_more_kinds_only_where_the_shape_leaves_some_whole(capsys):
    with pytest.raises(isoprune.IsopruneError, match=r"out of reach: .*; give a larger budget$"):
        isoprune.plan(make("test_vit"), 0.0, budget="macs=100K")  # every kind scaled alike already
    with pytest.raises(isoprune.IsopruneError, match=r"; give a larger budget, or ratios for more kinds \(one number"):
        isoprune.plan(make("test_vit"), {"mlp": 0.5}, budget="macs=100K")
    code, _, err = run_cli(capsys, "prune", "--model", "test_vit", "--weights", "none", "--target", "macs=100K", "--dry-run")
    assert code == 2 and err.strip().endswith("; give a larger target"), err


def test_budget_parse():
    assert isoprune.Budget.parse("4.2G") == isoprune.Budget("macs", 4_200_000_000)
    assert isoprune.Budget.parse("20M") == isoprune.Budget("params", 20_000_000)
    assert isoprune.Budget.parse("macs=800M") == isoprune.Budget("macs", 800_000_000)
    assert isoprune.Budget.parse("latency=50%") == isoprune.Budget("latency", 0, 0.5)
    assert isoprune.Budget.parse("latency=12ms") == isoprune.Budget("latency", 12.0)
    assert isoprune.Budget.parse("Latency = 0.5s") == isoprune.Budget("latency", 500.0)


@pytest.mark.parametrize("text", ["latency=5G", "12ms", "params=3ms", "latency=0%", "latency=0ms", "speed=2x"])
def test_budget_parse_refuses(text):
    with pytest.raises(isoprune.IsopruneError, match="cannot read budget"):
        isoprune.Budget.parse(text)


def _conv_width(model) -> float:
    """A stand-in clock, as a GPU's memory-bound kernels behave: time follows the width."""
    return float(sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)))


def test_latency_budget_bisects_on_what_the_clock_says(monkeypatch):
    from isoprune import _latency

    timed = []

    def clock(models, x, timing):
        assert x.shape[0] == 4 and len(models) <= 2
        timed.append(models[-1])
        return [[_conv_width(m)] * timing.rounds for m in models]

    monkeypatch.setattr(_latency, "interleaved", clock)
    model = make("test_resnet")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plan = isoprune.plan(model, 0.0, budget="latency=50%", timing=isoprune.Timing(batch_size=4, seconds=0.1))

    search = plan.search
    assert search["metric"] == "latency" and search["before"] == pytest.approx(_conv_width(model))
    assert search["budget"] == 0.5 * search["before"]
    assert 0.97 * search["budget"] <= search["after"] <= search["budget"]
    assert search["timing"] == {"batch_size": 4, "dtype": "float32", "channels_last": False, "seconds": 0.1, "rounds": 3, "device": "cpu"}
    assert len(timed) == 1 + search["evaluations"]  # the unpruned model alone, then each shape once, beside it
    assert [s["rounds"] for s in search["shapes"]] == [3] * search["evaluations"]  # a steady clock: no more rounds
    assert {s["ms"] for s in search["shapes"]} >= {search["before"], search["after"]}
    # the copy that was timed is the plan's shape; the model itself is untouched
    best = next(m for m in timed if _conv_width(m) == pytest.approx(search["after"]))
    assert isoprune.count(best) == (plan.macs["after"], plan.params["after"])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # half the width is a quarter of most convolutions' MACs: a MACs budget of 50% would keep far more
    assert plan.macs["after"] < 0.4 * plan.macs["before"]
    assert "latency budget" in plan.summary() and "timed" in plan.summary()


def test_latency_budget_is_not_moved_by_a_machine_that_slows_down(monkeypatch):
    from isoprune import _latency

    def clock(slowing):
        calls = []

        def timed(models, x, timing):  # every measurement slower than the one before, by ``slowing``
            calls.append(None)
            return [[_conv_width(m) * slowing ** len(calls)] * timing.rounds for m in models]
        return timed

    plans = []
    for slowing in (1.0, 1.25):
        monkeypatch.setattr(_latency, "interleaved", clock(slowing))
        plans.append(isoprune.plan(make("test_resnet"), 0.0, budget="latency=50%", timing=isoprune.Timing(batch_size=4, seconds=0.01)))
    steady, slowed = plans
    assert [g.keep for g in slowed.groups] == [g.keep for g in steady.groups]
    assert slowed.search["after"] / slowed.search["before"] == pytest.approx(steady.search["after"] / steady.search["before"])


def test_latency_budget_times_more_rounds_where_the_noise_straddles_it(monkeypatch):
    from isoprune import _latency

    noise = [0.9, 1.0, 1.1]  # each shape's rounds spread +-10% around its time; the unpruned copy's steady

    def clock(models, x, timing):
        return [[_conv_width(m)] * timing.rounds for m in models[:-1]] + [[_conv_width(models[-1]) * n for n in noise]]

    monkeypatch.setattr(_latency, "interleaved", clock)
    plan = isoprune.plan(make("test_resnet"), 0.0, budget="latency=50%", timing=isoprune.Timing(batch_size=4, seconds=0.01))
    search = plan.search
    budget, shapes = search["budget"], search["shapes"]
    assert len(shapes) == search["evaluations"]
    # after the unpruned shape (timed before the budget is known): 9 rounds (3 x 3, the most)
    # where the budget lies within the +-10%, 3 elsewhere
    for shape in shapes[1:]:
        straddles = 0.9 * shape["ms"] <= budget <= 1.1 * shape["ms"]
        assert shape["rounds"] == (9 if straddles else 3), shape
    assert any(s["rounds"] == 9 for s in shapes) and any(s["rounds"] == 3 for s in shapes[1:])
    assert search["after"] <= budget


def test_latency_budget_times_real_passes():
    model = make("test_resnet")
    plan = isoprune.plan(model, 0.0, budget="latency=70%", timing=isoprune.Timing(batch_size=2, seconds=0.02, dtype="bfloat16"))
    search = plan.search
    assert search["after"] <= search["budget"] == pytest.approx(0.7 * search["before"])
    assert plan.macs["after"] < plan.macs["before"]
    assert next(model.parameters()).dtype == torch.float32  # timed in bfloat16 on copies
    isoprune.apply_plan(model, plan)
    assert model(inputs_for(model)).shape == (2, 10)


def test_latency_budget_errors():
    with pytest.raises(isoprune.IsopruneError, match="without a latency budget"):
        isoprune.plan(make("test_resnet"), 0.5, timing=isoprune.Timing())
    with pytest.raises(isoprune.IsopruneError, match="unknown dtype"):
        isoprune.Timing(dtype="float8")
    assert not torch.backends.cudnn.benchmark
    with pytest.raises(isoprune.IsopruneError, match="out of reach"):
        isoprune.plan(make("test_resnet"), 0.0, budget="latency=0.0001ms", timing=isoprune.Timing(batch_size=1, seconds=0))
    assert not torch.backends.cudnn.benchmark  # on for the search, as deployed on a GPU, then as it was
