"""Pruning a saved model further: a pruned (or pruned and fine-tuned) directory is itself a model to prune."""
import json

import pytest
import torch
import yaml

import isoprune
from isoprune import _finetune, _io, cli

from conftest import run_cli

SIZE = ["--input-size", "32"]


@pytest.fixture(scope="module")
def once(tmp_path_factory):
    """test_resnet pruned once, from random weights, at 32x32."""
    out = tmp_path_factory.mktemp("further") / "once"
    assert cli.main(["prune", "--model", "test_resnet", "--weights", "none", "--num-classes", "10", *SIZE, "--target", "70%",
                     "--out", str(out)]) == 0
    return out


def test_a_saved_model_pruned_again_saves_and_loads_with_every_plan(once, tmp_path):
    model = isoprune.load(once)
    first = model.isoprune_plan
    isoprune.prune(model, 0.3)
    assert model.isoprune_earlier == [first] and model.isoprune_plan.macs["before"] == first.macs["after"]
    isoprune.save(model, tmp_path / "twice")
    metadata = _io.read_metadata(tmp_path / "twice")
    assert metadata["earlier"] == [first.to_dict()] and metadata["macs"] == model.isoprune_plan.macs
    loaded = isoprune.load(tmp_path / "twice")
    assert [p.to_dict() for p in loaded.isoprune_earlier] == [first.to_dict()]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_prune_a_saved_model_further_from_the_cli(capsys, once, digits):
    code, out, err = run_cli(capsys, "prune", "--model", once, "--target", "50%", "--json")
    assert code == 0, err
    further = once.with_name("once-pruned")  # by default beside it
    result = json.loads(out)
    before = _io.read_metadata(once)["macs"]["after"]
    assert result["out"] == str(further) and result["macs"]["before"] == before and result["macs"]["after"] <= 0.5 * before
    code, out, err = run_cli(capsys, "eval", further, "--data", digits, "--json", "--iters", "1", "--warmup", "0")
    assert code == 0, err
    assert json.loads(out)["macs"] == result["macs"]["after"] and json.loads(out)["input_size"] == [3, 32, 32]
    code, out, err = run_cli(capsys, "inspect", further)
    assert code == 0, err
    assert f"pruned further from {once} (2 plans in all); from the base: MACs" in out
    code, _, err = run_cli(capsys, "inspect", "--model", once)  # a name is asked for there
    assert code == 2 and "is a model isoprune saved, not a model name; give it as the PATH of eval, finetune or inspect, or as prune's --model" in err
    # its plan, given as its directory or as its plan file, is applied to the model it was made on
    expected = isoprune.load(further).state_dict()
    assert yaml.safe_load((further / "plan.yaml").read_text())["made_on"] == str(once)
    for i, plan in enumerate((further, further / "plan.yaml")):
        code, _, err = run_cli(capsys, "prune", "--plan", plan, "--out", once.with_name(f"replayed{i}"))
        assert code == 0, err
        replayed = isoprune.load(once.with_name(f"replayed{i}")).state_dict()
        assert replayed.keys() == expected.keys() and all(torch.equal(replayed[k], expected[k]) for k in expected)
    code, _, err = run_cli(capsys, "prune", "--plan", further / "plan.yaml", "--model", "test_resnet", "--weights", "none",
                           "--num-classes", "10", *SIZE, "--out", once.with_name("base"))
    assert code == 2 and "give that directory as --model" in err
    moved = once.with_name("moved.yaml")
    moved.write_text((further / "plan.yaml").read_text().replace(str(once), str(once.with_name("gone"))))
    code, _, err = run_cli(capsys, "prune", "--plan", moved, "--out", once.with_name("nowhere"))
    assert code == 2 and f"was made on the saved model {once.with_name('gone')}, which is not there" in err, err
    assert not once.with_name("nowhere").exists()
    # pruned from a model never trained since, whose own original holds random weights: no teacher
    code, _, err = run_cli(capsys, "finetune", further, "--data", digits, "--epochs", "1", "--batch-size", "128", "--out", once.with_name("ft"))
    assert code == 2 and "the original model was pruned from random weights, so it cannot teach" in err


@pytest.mark.parametrize("argv, message", [
    (["--weights", "none"], "is a saved model with weights of its own; --weights none would replace them"),
    (["--num-classes", "5"], "predicts 10 classes, and --num-classes gives a saved model no new head"),
    (["--input-size", "64"], "was saved for 32x32 inputs, not 64x64"),
])
def test_what_a_saved_model_keeps_is_not_given_again(capsys, once, tmp_path, argv, message):
    code, _, err = run_cli(capsys, "prune", "--model", once, "--target", "50%", *argv, "--out", tmp_path / "x")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_a_fine_tuned_model_pruned_further_learns_from_it(capsys, once, digits, tmp_path):
    code, _, err = run_cli(capsys, "finetune", once, "--data", digits, "--epochs", "2", "--batch-size", "64", "--teacher", "none",
                           "--no-augment", "--lr", "0.003", "--out", tmp_path / "tuned")
    assert code == 0, err
    code, _, err = run_cli(capsys, "prune", "--model", tmp_path / "tuned" / "best", "--target", "60%", "--out", tmp_path / "again")
    assert code == 0, err
    assert _io.read_metadata(tmp_path / "again")["config"]["model"] == str(tmp_path / "tuned" / "best")
    code, out, err = run_cli(capsys, "finetune", tmp_path / "again", "--data", digits, "--epochs", "1", "--batch-size", "64",
                             "--no-augment", "--out", tmp_path / "again-tuned", "--json")
    assert code == 0, err  # the default teacher: the fine-tuned model it was pruned from
    tuned = isoprune.load(tmp_path / "again-tuned" / "best")
    assert len(tuned.isoprune_earlier) == 1 and tuned.isoprune_plan.macs == _io.read_metadata(tmp_path / "again")["macs"]
    # pruned once more without training between: the teacher is still the last model that was trained
    code, _, err = run_cli(capsys, "prune", "--model", tmp_path / "again", "--target", "80%", "--out", tmp_path / "thrice")
    assert code == 0, err
    assert _finetune._original(_io.read_metadata(tmp_path / "thrice"))[0] == str(tmp_path / "tuned" / "best")
    assert len(isoprune.load(tmp_path / "thrice").isoprune_earlier) == 2


def test_a_recipe_budget_prunes_a_saved_model_to_that_share_of_its_base(capsys, caplog, tmp_path):
    """ResNet-50's 2.0 G recipe at 64x64 is 48.5% of the base there, whatever a saved model has left."""
    code, _, err = run_cli(capsys, "prune", "--model", "resnet50", "--weights", "none", "--input-size", "64", "--target", "80%",
                           "--out", tmp_path / "r50")
    assert code == 0, err
    base = _io.read_metadata(tmp_path / "r50")["macs"]["before"]
    with caplog.at_level("WARNING", logger="isoprune"):
        code, out, err = run_cli(capsys, "prune", "--model", tmp_path / "r50", "--target", "resnet50_2.0g", "--dry-run", "--json")
    assert code == 0, err
    assert "48.52% of resnet50 at the input size it was written for, are taken as that share at 64x64" in caplog.text
    assert 0.47 < json.loads(out)["macs"]["after"] / base <= 0.4852
