"""Plans are plain data: they round-trip and re-apply to a fresh model."""
import pytest
import torch

import isoprune
from conftest import inputs_for, make


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_plan_round_trips(tmp_path, suffix):
    plan = isoprune.plan(make("test_vit"), isoprune.Ratios(emb=0.25, heads=0.5, head_dim=0.25, mlp=0.5))
    path = plan.save(tmp_path / f"plan{suffix}")
    again = isoprune.PruningPlan.load(path)
    assert again == plan
    assert again.to_dict() == plan.to_dict()


@pytest.mark.parametrize("name", ["test_vit", "test_convnext", "test_resnet", "mobilenetv2_035"])
def test_saved_plan_reproduces_shapes_on_a_fresh_model(tmp_path, name):
    model = make(name)
    plan = isoprune.plan(model, 0.4)
    isoprune.apply_plan(model, plan)
    path = plan.save(tmp_path / "plan.yaml")
    fresh = make(name, seed=1)
    isoprune.apply_plan(fresh, isoprune.PruningPlan.load(path))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    fresh.load_state_dict(model.state_dict())
    x = inputs_for(model)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
    for name_, w in plan.widths.items():
        module = fresh.get_submodule(name_)
        got = [getattr(module, "in_features", getattr(module, "in_channels", None)),
               getattr(module, "out_features", getattr(module, "out_channels", None))]
        assert got == w["after"]


def test_plan_that_does_not_fit_is_a_user_error():
    plan = isoprune.plan(make("test_resnet"), 0.5)
    with pytest.raises(isoprune.IsopruneError, match="does not fit this VisionTransformer: the plan's group layer4.0.downsample.1 .channels. is blocks.5.mlp.fc2 .emb. here"):
        isoprune.apply_plan(make("test_vit"), plan)


def test_a_plan_applied_to_a_model_of_other_widths_names_the_first_misfit():
    plan = isoprune.plan(make("test_resnet"), 0.5)
    narrower = isoprune.prune(make("test_resnet"), 0.25)
    first = plan.groups[0]
    with pytest.raises(isoprune.IsopruneError) as err:
        isoprune.apply_plan(narrower, plan)
    kept = len(narrower.isoprune_plan.groups[0].keep) * first.blocks
    assert f"{first.root} ({first.kind}) has {kept} channels here, {first.channels * first.blocks} in the plan" in str(err.value)


def test_a_plan_applied_twice_says_so():
    model = make("test_resnet")
    plan = isoprune.plan(model, 0.5)
    isoprune.apply_plan(model, plan)
    before = {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(isoprune.IsopruneError, match="was pruned by this plan already; apply a plan to a fresh copy"):
        isoprune.apply_plan(model, plan)
    assert {k: v.shape for k, v in model.state_dict().items()} == before


def test_loading_something_that_is_not_a_plan(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("model: x\nfoo: 1\n")
    with pytest.raises(isoprune.IsopruneError, match="not a pruning plan"):
        isoprune.PruningPlan.load(path)
    with pytest.raises(isoprune.IsopruneError, match="no plan file"):
        isoprune.PruningPlan.load(tmp_path / "missing.yaml")


def test_summary_lists_classes_and_totals():
    plan = isoprune.plan(make("test_vit"), isoprune.Ratios(mlp=0.5))
    text = plan.summary()
    assert "mlp" in text and "1152 -> 576" in text and "MACs" in text
