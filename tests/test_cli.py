"""The command line, end to end: outputs, recipes, targets, and one clear line for bad input."""
import json
import os
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

import isoprune
from isoprune import _data, _eval, _finetune, _models, _pipeline, _recipes, cli
from isoprune._errors import command_line, on_command_line, setting
from isoprune._plan import figure

from conftest import run_cli


def test_prune_writes_a_loadable_model(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "isoprune.cli", "prune", "--model", "test_vit", "--weights", "none",
         "--ratios", "emb=0.25,heads=0.5,head_dim=0.25,mlp=0.5", "--depth", "blocks=1", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert sorted(p.name for p in out.iterdir()) == ["isoprune.json", "model.safetensors", "plan.yaml", "report.png"]
    assert (out / "report.png").stat().st_size > 10_000
    model = isoprune.load(out)
    assert isoprune.count(model) == (summary["macs"]["after"], summary["params"]["after"])
    assert len(model.blocks) == len(timm.create_model("test_vit").blocks) - 1
    metadata = json.loads((out / "isoprune.json").read_text())
    assert metadata["config"]["ratios"]["heads"] == 0.5 and metadata["versions"]["isoprune"] == isoprune.__version__
    assert isoprune.PruningPlan.load(out / "plan.yaml").to_dict() == model.isoprune_plan.to_dict()


def test_inspect(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "inspect", "--model", "test_convnext", "--json")
    data = json.loads(out)
    assert code == 0 and {g["kind"] for g in data["groups"]} >= {"mlp"}
    run_cli(capsys, "prune", "--model", "test_resnet", "--weights", "none", "--ratios", "0.3", "--input-size", "64", "--out", tmp_path / "m")
    code, out, _ = run_cli(capsys, "inspect", tmp_path / "m")
    assert code == 0 and "base timm:test_resnet {}, input [3, 64, 64]" in out
    plan = isoprune.PruningPlan.load(tmp_path / "m" / "plan.yaml")
    m = plan.macs  # a small model's figures in M, not 0.0xx G
    assert f"MACs {m['before'] / 1e6:.3f} M -> {m['after'] / 1e6:.3f} M, params" in out and m["before"] < 1e8
    code, from_file, _ = run_cli(capsys, "inspect", tmp_path / "m" / "plan.yaml")  # a plan file alone
    assert code == 0 and from_file.startswith("plan for test_resnet, input [3, 64, 64]\n")
    assert from_file.split("\n", 1)[1] == out.split("\n", 1)[1]  # the same plan and layers as the directory shows
    code, as_json, _ = run_cli(capsys, "inspect", tmp_path / "m" / "plan.yaml", "--json")
    assert code == 0 and json.loads(as_json)["macs"] == m


def test_inspect_takes_a_models_name_as_its_path(capsys, tmp_path):
    code, by_name, _ = run_cli(capsys, "inspect", "test_convnext")
    assert code == 0 and by_name == run_cli(capsys, "inspect", "--model", "test_convnext")[1]
    assert by_name.startswith("test_convnext: ") and "  1 group, channels" in by_name and "group ," not in by_name
    run_cli(capsys, "prune", "--model", "test_resnet", "--weights", "none", "--ratios", "0.3", "--out", tmp_path / "m")
    for path, message in [(tmp_path / "m" / "model.safetensors", f"is a file of the saved model {tmp_path / 'm'}; give its directory"),
                          (tmp_path / "m" / "isoprune.json", "is a file of the saved model"),
                          ("prunned/deit_s", "no saved model or plan at prunned/deit_s, and no model of that name;"),
                          ("prunned/deit_s", "or did you mean deit_s?")]:
        code, _, err = run_cli(capsys, "inspect", path)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    # the commands that take a saved model say the same of a file, and how to give a checkpoint
    (tmp_path / "r18.pth").write_bytes(b"weights")
    for command in (["eval"], ["finetune", "--data", tmp_path], ["ssl", "--data", tmp_path]):
        code, _, err = run_cli(capsys, command[0], tmp_path / "m" / "model.safetensors", *command[1:])
        assert code == 2 and f"give its directory: isoprune {command[0]} {tmp_path / 'm'}" in err, err
        code, _, err = run_cli(capsys, command[0], tmp_path / "r18.pth", *command[1:])
        assert code == 2 and f"is a file, not a directory isoprune saved; for a checkpoint, give its architecture: isoprune {command[0]} --model NAME --weights" in err, err


@pytest.mark.parametrize("value, metric, like, text", [
    (17.679e9, "macs", None, "17.679 G"), (2.083e6, "macs", None, "2.083 M"), (0.9e8, "macs", 1.5e8, "0.090 G"),
    (22.05e6, "params", None, "22.050 M"), (2.09e4, "params", None, "20.900 K"), (209e3, "params", None, "0.209 M"),
])
def test_figures_take_a_readable_unit(value, metric, like, text):
    assert figure(value, metric, like) == text


def test_a_reader_that_goes_away_is_no_traceback():
    """``isoprune inspect ... | head -1``: the pipe closes before the output is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "isoprune.cli", "inspect", "--model", "test_vit"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == "", done.stderr


def test_dry_run_writes_nothing(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "prune", "--model", "test_resnet", "--weights", "none", "--ratios", "0.3",
                           "--out", tmp_path / "m", "--dry-run")
    assert code == 0 and "MACs" in out and "layers changed" in out
    assert not (tmp_path / "m").exists()


def test_taylor_with_data(capsys, tmp_path, digits_folder):
    code, out, err = run_cli(capsys, "prune", "--model", "test_resnet", "--weights", "none", "--num-classes", "10",
                             "--importance", "taylor", "--data", digits_folder, "--calib-batches", "2",
                             "--batch-size", "8", "--ratios", "0.3", "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["groups"]


def test_recalibrated_batch_norm_is_saved(capsys, tmp_path, digits_folder):
    """``--recalibrate-bn 2`` writes the model whose BatchNorm statistics ``recalibrate_bn`` measures
    on the first 2 calibration batches; the weights are those of the same prune without it."""
    argv = ["prune", "--model", "test_resnet", "--weights", "none", "--num-classes", "10", "--ratios", "0.3",
            "--data", digits_folder, "--batch-size", "8", "--input-size", "32"]
    code, out, err = run_cli(capsys, *argv, "--recalibrate-bn", "2", "--out", tmp_path / "recal")
    assert code == 0, err
    assert "BatchNorm statistics measured again on up to 2 batches" in out
    run_cli(capsys, *argv, "--out", tmp_path / "plain")
    recal, plain = isoprune.load(tmp_path / "recal"), isoprune.load(tmp_path / "plain")
    assert not torch.equal(recal.bn1.running_var, plain.bn1.running_var)
    isoprune.recalibrate_bn(plain, _pipeline.calibration_batches(digits_folder, plain, 8, limit=2, input_size=32))
    expected = plain.state_dict()
    assert all(torch.allclose(v, expected[k]) for k, v in recal.state_dict().items())
    assert json.loads((tmp_path / "recal" / "isoprune.json").read_text())["config"]["recalibrate_bn"] == 2


def test_a_folder_is_scanned_once_while_it_is_unchanged(capsys, tmp_path, digits_folder, monkeypatch):
    """Pruning with ``--data`` and ``--recalibrate-bn`` reads the folder before and after: its
    files are listed once; a file added to a class directory is seen by the next read."""
    from torchvision.datasets import folder

    scans = []
    walk = folder.make_dataset
    monkeypatch.setattr(folder, "make_dataset", lambda *a, **k: scans.append(a[0]) or walk(*a, **k))
    code, _, err = run_cli(capsys, "prune", "--model", "test_resnet", "--weights", "none", "--num-classes", "10", "--ratios", "0.3",
                           "--data", digits_folder, "--batch-size", "8", "--input-size", "32", "--recalibrate-bn", "2", "--out", tmp_path / "m")
    assert code == 0, err
    assert len(scans) == 1
    before = _data.image_folder(digits_folder, None)
    (digits_folder / "3" / "0.png").write_bytes((digits_folder / "0" / "0.png").read_bytes())
    after = _data.image_folder(digits_folder, None)
    assert len(scans) == 2 and len(after) == len(before) + 1 and (str(digits_folder / "3" / "0.png"), 3) in after.samples


def test_a_saved_plan_reapplies_to_other_weights(capsys, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    run_cli(capsys, "prune", "--model", "swin_tiny_patch4_window7_224", "--weights", "none", "--seed", "1",
            "--ratios", "emb=0.3,heads=0.25,head_dim=0.25,mlp=0.4", "--out", first)
    code, out, err = run_cli(capsys, "prune", "--plan", first / "plan.yaml", "--weights", "none", "--seed", "2",
                             "--out", second, "--json")
    assert code == 0, err
    a, b = isoprune.load(first), isoprune.load(second)
    assert a.isoprune_plan.to_dict() == b.isoprune_plan.to_dict()
    assert json.loads(out)["macs"]["after"] == isoprune.count(b)[0] == isoprune.count(a)[0]
    assert not torch.equal(a.head.fc.weight, b.head.fc.weight)  # same shape, the second seed's weights


def test_a_vit_is_built_for_the_input_size_asked(capsys, tmp_path):
    """DeiT takes the one size its position embedding is built for: ``--input-size 32`` builds
    it for 32x32 (timm's ``img_size``), and the saved model rebuilds so; a CNN takes any size and
    is built as it is. A saved model asked for another size is one line, not a traceback."""
    code, out, err = run_cli(capsys, "prune", "--model", "deit_tiny", "--weights", "none", "--num-classes", "10",
                             "--ratios", "0.3", "--input-size", "32", "--out", tmp_path / "m", "--json")
    assert code == 0, err
    model = isoprune.load(tmp_path / "m")
    assert model.isoprune_base["kwargs"]["img_size"] == 32 and model.patch_embed.img_size == (32, 32)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    whole = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, num_classes=10)
    assert json.loads(out)["macs"]["before"] == isoprune.count(whole)[0]
    whole.isoprune_base = {"library": "timm", "name": "deit_tiny_distilled_patch16_224", "kwargs": {"img_size": 32, "num_classes": 10}}
    isoprune.save(whole, tmp_path / "whole", plan=isoprune.plan(whole, 0.0))
    rebuilt = _models.create("deit_tiny", str(tmp_path / "whole"), num_classes=10)  # --weights DIR: built for the size it records
    assert rebuilt.patch_embed.img_size == (32, 32) and torch.equal(rebuilt.pos_embed, whole.pos_embed)
    code, _, err = run_cli(capsys, "prune", "--plan", tmp_path / "m", "--weights", "none", "--num-classes", "10", "--out", tmp_path / "again")
    assert code == 0, err  # the plan's size, without --input-size
    assert isoprune.load(tmp_path / "again").isoprune_plan.to_dict() == model.isoprune_plan.to_dict()
    code, out, err = run_cli(capsys, "eval", tmp_path / "m", "--input-size", "48", "--iters", "1")
    assert code == 2 and "takes 32x32 inputs only, not 48x48" in err and len(err.strip().splitlines()) == 1
    assert "img_size" not in _models.create("resnet18", "none", input_size=32).isoprune_base["kwargs"]


def test_a_checkpoint_for_another_input_size_is_resampled(tmp_path, caplog):
    """A DeiT checkpoint at 224x224 loads into the DeiT built for 32x32, its position embeddings
    resampled by timm's filter (as for pretrained weights); other misfits are still refused."""
    original = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=10)
    safetensors.torch.save_file(original.state_dict(), str(tmp_path / "deit.safetensors"))
    with caplog.at_level("WARNING", logger="isoprune"):
        model = _models.create("deit_tiny", str(tmp_path / "deit.safetensors"), input_size=32, num_classes=10)
    assert "resampled pos_embed of" in caplog.text
    assert model.pos_embed.shape == (1, 2 + 4, 192) and torch.equal(model.pos_embed[:, :2], original.pos_embed[:, :2])  # class and dist tokens
    assert torch.equal(model.blocks[0].attn.qkv.weight, original.blocks[0].attn.qkv.weight)
    with pytest.raises(isoprune.IsopruneError, match=r"mis-shaped keys \(first: cls_token"):  # no filter makes DeiT-Ti DeiT-S
        _models.create("deit_small_distilled_patch16_224", str(tmp_path / "deit.safetensors"), num_classes=10)


def test_a_checkpoint_for_other_classes_loads_under_a_new_head(capsys, tmp_path, caplog, digits):
    """``--num-classes`` over a checkpoint for other classes: all but its classifier loads, as timm
    leaves a pretrained head out; such a model's original has no head to teach with."""
    torch.manual_seed(0)
    source = timm.create_model("test_resnet")  # 1000 classes, as its pretrained weights
    safetensors.torch.save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    with caplog.at_level("WARNING", logger="isoprune"):
        model = _models.create("test_resnet", str(tmp_path / "w.safetensors"), num_classes=10)
    assert "left out the classifier of" in caplog.text and "fc.weight (1000, " in caplog.text
    assert model.fc.out_features == 10 and _models.head_classes("test_resnet", str(tmp_path / "w.safetensors")) == 1000
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items() if not k.startswith("fc."))
    with pytest.raises(isoprune.IsopruneError, match="0 missing, 0 unexpected, 2 mis-shaped keys"):  # no head asked for: no fit
        _models.load_weights(timm.create_model("test_resnet", num_classes=10), str(tmp_path / "w.safetensors"))
    code, _, err = run_cli(capsys, "eval", "--model", "test_resnet", "--weights", tmp_path / "w.safetensors", "--num-classes", "10")
    assert code == 2 and "2 mis-shaped keys (first: fc.weight" in err  # eval judges the weights' head, not a new one
    code, _, err = run_cli(capsys, "prune", "--model", "test_resnet", "--weights", tmp_path / "w.safetensors", "--num-classes", "10",
                           "--ratios", "0.3", "--input-size", "32", "--out", tmp_path / "pruned")
    assert code == 0, err
    code, _, err = run_cli(capsys, "finetune", tmp_path / "pruned", "--data", digits, "--epochs", "1", "--out", tmp_path / "tuned")
    assert code == 2 and "was given a new 10-class head when pruned, but the teacher's weights" in err
    assert "predict 1000 classes" in err and not (tmp_path / "tuned").exists()
    # so with timm's pretrained head, refused before anything is downloaded
    pretrained = tmp_path / "from_pretrained"
    isoprune.prune(model, 0.3, example_inputs=torch.randn(1, 3, 32, 32))
    isoprune.save(model, pretrained, extra={"config": {"weights": "pretrained"}})
    code, _, err = run_cli(capsys, "finetune", pretrained, "--data", digits, "--epochs", "1", "--out", tmp_path / "tuned")
    assert code == 2 and "teacher's weights (pretrained) predict 1000 classes" in err


def test_a_recipe_budget_is_a_share_of_the_model_at_another_input_size(capsys, caplog):
    """ResNet-50's 2.0 G is 48.5% of it at 224x224; at 64x64 the recipe prunes to that share, not to
    an absolute 2.0 G above the whole model's 0.34 G. A budget the user gives stays as given."""
    with caplog.at_level("WARNING", logger="isoprune"):
        code, out, err = run_cli(capsys, "prune", "--model", "resnet50", "--target", "resnet50_2.0g", "--weights", "none",
                                 "--input-size", "64", "--dry-run", "--json")
    assert code == 0, err
    assert "the recipe's 2.000 G MACs, 48.52% of resnet50 at the input size it was written for, are taken as that share at 64x64" in caplog.text
    macs = json.loads(out)["macs"]
    assert macs["before"] < 0.4e9 and 0.47 < macs["after"] / macs["before"] <= 0.4852
    code, _, err = run_cli(capsys, "prune", "--recipe", "resnet50_2.0g", "--target", "2.0G", "--weights", "none", "--input-size", "64",
                           "--importance", "l2", "--dry-run")
    assert code == 2 and "budget 2.000 G MACs is not below the model's 0.338 G MACs" in err


def test_a_model_name_target_counts_at_the_input_size(capsys):
    """DeiT-S's MACs at 64x64 (a ViT built for 224 is built for 64 to count them) are the budget."""
    code, out, err = run_cli(capsys, "prune", "--model", "deit_base", "--target", "deit_small_patch16_224", "--weights", "none",
                             "--input-size", "64", "--dry-run", "--json")
    assert code == 0, err
    macs = json.loads(out)["macs"]
    assert 0.99 * 0.3695e9 <= macs["after"] <= 0.3695e9 < macs["before"] < 1.6e9  # deit_small at 64: 0.3695 G


def test_a_named_target_hands_its_recipe_to_finetune():
    """``--target deit_s`` takes the DeiT-B 4.2G recipe's shape, and a later fine-tune its hyper-parameters."""
    cfg, recipe = cli.prune_config(cli._parser().parse_args(["prune", "--model", "deit_base", "--target", "deit_s"]))
    assert Path(recipe) == _recipes.recipes_dir() / "deit_b_4.2g.yaml"
    assert cfg.ratios == _recipes.load_recipe(recipe).prune.ratios
    finetune = _finetune.config({"config": {"recipe": recipe}}, epochs=3)
    assert finetune == replace(_recipes.load_recipe(recipe).finetune, epochs=3)
    assert finetune.teacher == "regnety_160.deit_in1k"


def test_weights_from_a_local_checkpoint(capsys, tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("test_resnet", num_classes=10)
    safetensors.torch.save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pth")
    for path in ("w.safetensors", "w.pth"):
        model = isoprune.create_model("test_resnet", tmp_path / path, num_classes=10)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))


def test_recipe_flags_override(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prune:\n  model: test_vit\n  weights: none\n  ratios: {mlp: 0.5}\n  importance: taylor\n")
    code, out, err = run_cli(capsys, "prune", "--recipe", recipe, "--importance", "l2", "--ratios", "mlp=0.25", "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["ratios"]["mlp"] == 0.25


def test_a_recipe_takes_numbers_written_as_yaml_1_2_does(tmp_path):
    """PyYAML reads ``1e-3`` as a string (YAML 1.1 wants a dot); a recipe reads it as a number."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prune:\n  ratios: {mlp: 5e-1}\nfinetune:\n  lr: 1e-3\n  weight_decay: 5.0E-2\n  warmup_epochs: 5\n  opt: 1e-3x\n")
    loaded = _recipes.load_recipe(recipe)
    assert (loaded.finetune.lr, loaded.finetune.weight_decay, loaded.prune.ratios) == (1e-3, 5e-2, {"mlp": 0.5})
    assert loaded.finetune.warmup_epochs == 5 and loaded.finetune.opt == "1e-3x"


@pytest.mark.parametrize("settings, message", [
    ({"lr": "0.1"}, "lr must be float, not '0.1'; set lr, or finetune.lr in a recipe"),
    ({"epochs": 1.5}, "epochs must be int, not 1.5; set epochs"),
    ({"workers": "2"}, "workers must be int, not '2'; set workers"),
])
def test_api_settings_of_the_wrong_type_are_one_error_before_any_work(tmp_path, settings, message):
    with pytest.raises(isoprune.IsopruneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        isoprune.finetune("test_resnet", tmp_path / "no-data", tmp_path / "out", weights="none", **settings)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings, message", [
    ({"batch_size": 0}, "batch_size must be a whole number at least 1, not 0; set batch_size"),
    ({"batch_size": "8"}, "batch_size must be a whole number at least 1, not '8'"),
    ({"warmup": -1}, "warmup must be a whole number at least 0, not -1; set warmup"),
    ({"input_size": 0}, "input_size must be a whole number at least 1, not 0"),
])
def test_evaluate_checks_its_numbers_as_eval_does(settings, message):
    with pytest.raises(isoprune.IsopruneError, match=message):
        isoprune.evaluate("test_resnet", weights="none", **settings)


def test_a_hint_names_the_flag_on_the_command_line_and_the_argument_in_python(capsys, tmp_path):
    missing = tmp_path / "gone.pth"
    code, _, err = run_cli(capsys, "eval", "--model", "test_resnet", "--weights", missing, "--iters", "1")
    assert code == 2 and err.strip() == f"isoprune: error: no checkpoint at {missing}; give the path of a .safetensors or .pth file, or --weights none"
    with pytest.raises(isoprune.IsopruneError) as raised:
        isoprune.evaluate("test_resnet", weights=str(missing))
    assert str(raised.value) == f"no checkpoint at {missing}; give the path of a .safetensors or .pth file, or weights='none'"
    spelt = lambda: [setting("batch_size"), setting("batch_size", 8), setting("force", True), setting("teacher", "PATH"),  # noqa: E731
                     setting("teacher", "none"), setting("out", Path("runs/a"))]
    assert spelt() == ["batch_size", "batch_size=8", "force=True", "teacher=PATH", "teacher='none'", "out='runs/a'"]
    with command_line():
        assert spelt() == ["--batch-size", "--batch-size 8", "--force", "--teacher PATH", "--teacher none", "--out runs/a"]
    assert not on_command_line()  # the command's spelling ends with it


def test_configs_keep_numbers_as_their_fields_do():
    cfg = _recipes.FinetuneConfig(lr=1, betas=(0.9, 0.99), epochs=torch.tensor(3).numpy()[()])
    assert (type(cfg.lr), cfg.betas, type(cfg.epochs)) == (float, [0.9, 0.99], int)


@pytest.mark.parametrize("path", _recipes.available(), ids=lambda p: p.stem)
def test_every_recipe_dry_runs_near_the_paper(capsys, path):
    """Structural figures (random init, l2 importance) land within 3% of the paper's MACs."""
    code, out, err = run_cli(capsys, "prune", "--recipe", path, "--weights", "none", "--importance", "l2", "--dry-run", "--json")
    assert code == 0, err
    recipe = _recipes.load_recipe(path)
    macs = json.loads(out)["macs"]["after"] / 1e9
    assert macs == pytest.approx(recipe.paper.macs, rel=0.03)
    if recipe.prune.target:
        budget = isoprune.Budget.parse(recipe.prune.target).value / 1e9
        assert 0.99 * budget <= macs <= budget


@pytest.mark.slow
@pytest.mark.parametrize("target,budget", [("deit_2.6g", 2.61e9), ("deit_small_patch16_224", None)])
def test_named_and_model_targets_land_within_one_percent(capsys, target, budget):
    code, out, err = run_cli(capsys, "prune", "--model", "deit_base", "--target", target, "--weights", "none", "--dry-run", "--json")
    assert code == 0, err
    if budget is None:
        with torch.device("meta"):
            budget = isoprune.count(timm.create_model(target))[0]
    macs = json.loads(out)["macs"]["after"]
    assert 0.99 * budget <= macs <= budget


@pytest.fixture
def digits_folder(tmp_path):
    """A small real ImageFolder: scikit-learn's digits as 32x32 RGB PNGs, 10 classes."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path / "digits"
    for i, (image, label) in enumerate(zip(digits.images[:60], digits.target[:60])):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * 255 / 16).astype("uint8")
        Image.fromarray(pixels).convert("RGB").resize((32, 32)).save(folder / f"{i}.png")
    return root


def _bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    text_only = tmp_path / "text" / "cls"
    text_only.mkdir(parents=True)
    (text_only / "a.txt").write_text("not an image")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(os.urandom(256))
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file(timm.create_model("test_convnext").state_dict(), str(other))
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("prune:\n  model: test_vit\n  ratio: 0.5\n")
    vit_plan = isoprune.plan(timm.create_model("test_vit"), 0.3).save(tmp_path / "vit_plan.yaml")
    saved = timm.create_model("test_resnet")
    saved.isoprune_base = {"library": "timm", "name": "test_resnet", "kwargs": {}}
    isoprune.save(saved, tmp_path / "saved", plan=isoprune.plan(saved, 0.0))
    isoprune.save(saved, tmp_path / "run" / "best", plan=isoprune.plan(saved, 0.0))  # as finetune --out leaves it
    isoprune.save(isoprune.prune(saved, 0.3), tmp_path / "pruned")
    (tmp_path / "empty.pth").touch()
    base = ["prune", "--model", "test_resnet", "--weights", "none"]
    return {
        "unknown model": (["prune", "--model", "deit_bsae", "--ratios", "0.5"], "did you mean"),
        "a training run's directory": (["prune", "--model", tmp_path / "run", "--ratios", "0.5"],
                                       f"{tmp_path / 'run'} is a training run, not a saved model; give its model: {tmp_path / 'run' / 'best'}"),
        "a directory that holds no model": (["prune", "--model", empty, "--ratios", "0.5"], f"{empty} is not a saved isoprune model (no isoprune.json)"),
        "a saved model given weights": (["prune", "--model", tmp_path / "saved", "--weights", "none", "--ratios", "0.5"], "weights of its own"),
        "ratios for kinds it lacks": (base + ["--ratios", "mlp=0.5"], "reach no group of this ResNet, so nothing would be pruned"),
        "ratio above 1": (base + ["--ratios", "mlp=1.5"], "outside [0, 1)"),
        "unknown ratio key": (base + ["--ratios", "mpl=0.5"], "unknown ratio key 'mpl'"),
        "target above base": (base + ["--target", "100G"], "not below"),
        "taylor without data": (base + ["--ratios", "0.3", "--importance", "taylor"], "needs data"),
        "missing data dir": (base + ["--ratios", "0.3", "--data", tmp_path / "nope"], f"no data directory {tmp_path / 'nope'}"),
        "empty data dir": (base + ["--ratios", "0.3", "--importance", "taylor", "--data", empty], "no images"),
        "non-image data dir": (base + ["--ratios", "0.3", "--importance", "taylor", "--data", tmp_path / "text"], "no images"),
        "missing checkpoint": (["prune", "--model", "test_resnet", "--weights", tmp_path / "nope.pth", "--ratios", "0.3"], "no checkpoint"),
        "corrupt checkpoint": (["prune", "--model", "test_resnet", "--weights", corrupt, "--ratios", "0.3"], "cannot read checkpoint"),
        "other architecture": (["prune", "--model", "test_resnet", "--weights", other, "--ratios", "0.3"], "does not fit"),
        "empty checkpoint": (["prune", "--model", "test_resnet", "--weights", tmp_path / "empty.pth", "--ratios", "0.3"],
                             f"checkpoint {tmp_path / 'empty.pth'} is empty"),
        "a pruned model's weights": (["prune", "--model", "test_resnet", "--weights", tmp_path / "pruned" / "model.safetensors", "--ratios", "0.3"],
                                     f"holds a model isoprune pruned, not the full widths of ResNet; give its directory as the model (--model {tmp_path / 'pruned'}"),
        "unknown recipe key": (["prune", "--recipe", recipe], "unknown key 'prune.ratio'"),
        "target for another model": (base + ["--target", "deit_s"], "defined for"),
        "nothing to prune": (base, "nothing to prune"),
        "plan that does not fit": (base + ["--plan", vit_plan], "plan for test_vit does not fit"),
        "missing plan": (base + ["--plan", tmp_path / "nope.yaml"], "no plan file"),
        "unknown flag": (base + ["--ratio", "0.3"], "unrecognized arguments"),
        "bad depth": (base + ["--depth", "layer1=x"], "cannot read depth"),
        "recalibration without data": (base + ["--ratios", "0.3", "--recalibrate-bn", "4"], "needs data"),
        "negative recalibration": (base + ["--ratios", "0.3", "--recalibrate-bn", "-1"], "number of batches"),
        "bad latency target": (base + ["--target", "latency=5G"], "cannot read budget"),
        "timing without a latency target": (base + ["--target", "50%", "--dtype", "float16", "--channels-last"],
                                            "--dtype, --channels-last without a latency target"),
    }


BAD = ["unknown model", "a training run's directory", "a directory that holds no model", "a saved model given weights", "ratios for kinds it lacks", "ratio above 1", "unknown ratio key", "target above base", "taylor without data",
       "missing data dir", "empty data dir", "non-image data dir", "missing checkpoint", "corrupt checkpoint", "other architecture",
       "empty checkpoint", "a pruned model's weights",
       "unknown recipe key", "target for another model", "nothing to prune", "unknown flag", "bad depth",
       "plan that does not fit", "missing plan", "recalibration without data", "negative recalibration",
       "bad latency target", "timing without a latency target"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, case):
    argv, message = _bad_inputs(tmp_path)[case]
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, *argv, "--out", out_dir)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("isoprune: error:"), err
    assert message in lines[0]
    assert "Traceback" not in err and not out_dir.exists()


@pytest.mark.parametrize("case", ["taylor without data", "missing data dir", "recalibration without data"])
def test_data_is_checked_before_the_model_is_built(capsys, tmp_path, monkeypatch, case):
    """Building the model takes seconds and gigabytes for DeiT-B: what is wrong with --data is said first."""
    from isoprune import _pipeline

    def build(cfg):
        raise AssertionError("the model was built")

    monkeypatch.setattr(_pipeline, "source_model", build)
    argv, message = _bad_inputs(tmp_path)[case]
    code, _, err = run_cli(capsys, *argv, "--out", tmp_path / "out")
    assert code == 2 and message in err and "was built" not in err


@pytest.mark.parametrize("argv, message", [
    (["prune", "--model", "test_resnet", "--weights", "none", "--ratios", "0.3", "--batch-size", "0"],
     "batch_size must be at least 1, not 0; set --batch-size, or prune.batch_size in a recipe"),
    (["prune", "--model", "test_resnet", "--weights", "none", "--ratios", "0.3", "--calib-batches", "0"], "calib_batches must be at least 1, not 0"),
    (["prune", "--model", "test_resnet", "--weights", "none", "--target", "latency=50%", "--latency-batch", "0"], "latency_batch must be at least 1"),
    (["finetune", "--model", "test_resnet", "--data", "DATA", "--epochs", "0"], "epochs must be at least 1, not 0; set --epochs, or finetune.epochs"),
    (["finetune", "--model", "test_resnet", "--data", "DATA", "--drop-path", "1.5"], "drop_path must be in [0, 1), not 1.5"),
    (["finetune", "--model", "test_resnet", "--data", "DATA", "--lr", "0"], "lr must be above 0, not 0"),
    (["finetune", "--model", "test_resnet", "--data", "DATA", "--workers", "-1"], "workers must be at least 0, not -1; set --workers"),
    (["finetune", "--model", "test_resnet", "--data", "DATA", "--stop-after", "0"], "stop_after must be at least 1, not 0"),
    (["ssl", "--model", "test_vit", "--data", "DATA", "--local-crops-number", "-1"], "local_crops_number must be at least 0, not -1"),
    (["ssl", "--model", "test_vit", "--data", "DATA", "--momentum-teacher", "1.5"], "momentum_teacher must be in [0, 1], not 1.5"),
    (["finetune", "--model", "test_resnet", "--data", "DATA", "--recipe", "RECIPE"], "ema_decay must be in [0, 1), not 2; set --ema-decay, or finetune.ema_decay"),
    (["finetune", "--model", "test_resnet", "--data", "DATA", "--betas", "0.9"], "betas must be two numbers in [0, 1), not 0.9"),
    (["ssl", "--model", "test_vit", "--data", "DATA", "--global-crops-scale", "0.9", "0.1"],
     "global_crops_scale must be two numbers in (0, 1], the smaller first, not 0.9 0.1"),
    (["finetune", "--model", "test_resnet", "--weights", "none", "--num-classes", "10", "--data", "DATA", "--randaugment", "bogus"],
     "timm cannot build the training transforms (randaugment 'bogus', interpolation 'bicubic'): Unknown AA policy bogus"),
    (["finetune", "--model", "test_resnet", "--weights", "none", "--num-classes", "10", "--data", "DATA", "--interpolation", "weird"],
     "timm cannot build the training transforms (randaugment None, interpolation 'weird')"),
    (["finetune", "--model", "test_resnet", "--weights", "none", "--num-classes", "10", "--data", "DATA", "--input-size", "32",
      "--batch-size", "64", "--grad-accum-steps", "3"], "a batch of 64 per process does not split into 3 equal steps"),
])
def test_a_number_out_of_range_is_one_line_before_any_work(capsys, tmp_path, digits, argv, message):
    recipe = tmp_path / "ema.yaml"
    recipe.write_text("finetune:\n  ema_decay: 2\n")
    argv = [{"DATA": digits, "RECIPE": recipe}.get(a, a) for a in argv]
    code, out, err = run_cli(capsys, *argv, "--out", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("error, said", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB"),
     "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)"), "out of memory (the CPU could not give 37.3 GiB)"),
])
def test_running_out_of_memory_is_one_line(capsys, monkeypatch, error, said):
    def short(*args, **kwargs):
        raise error

    monkeypatch.setattr(_eval, "latency", short)
    code, _, err = run_cli(capsys, "eval", "--model", "test_vit", "--weights", "none")
    assert code == 2 and err.strip() == (f"isoprune: error: {said}; lower --batch-size (or --latency-batch), give a smaller "
                                         "--input-size, or use a device with more memory")


def test_other_runtime_errors_are_not_taken_for_memory(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(_eval, "latency", broken)
    with pytest.raises(RuntimeError, match="a bug of ours"):
        cli.main(["eval", "--model", "test_vit", "--weights", "none"])


def test_a_step_batchnorm_cannot_train_on_ends_the_run_in_one_line(capsys, tmp_path, digits):
    code, _, err = run_cli(capsys, "finetune", "--model", "test_resnet", "--weights", "none", "--num-classes", "10", "--data", digits,
                           "--input-size", "32", "--batch-size", "64", "--grad-accum-steps", "64", "--out", tmp_path / "out")
    last = err.strip().splitlines()[-1]  # after the first epoch's progress bar
    assert code == 2 and last.startswith("isoprune: error: BatchNorm cannot train on 1 image at a time"), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value, message", [("--batch-size", "0", "must be at least 1, not 0"), ("--warmup", "-1", "must be at least 0, not -1"),
                                                  ("--iters", "x", "'x' is not a whole number")])
def test_eval_takes_whole_numbers_in_range(capsys, flag, value, message):
    code, _, err = run_cli(capsys, "eval", "--model", "test_vit", "--weights", "none", flag, value)
    assert code == 2 and err.strip() == f"isoprune: error: eval: argument {flag}: {message}; see isoprune eval --help"


def test_prune_to_a_latency_target(capsys, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "prune", "--model", "test_resnet", "--weights", "none", "--target", "latency=70%",
                             "--latency-batch", "2", "--out", out_dir)
    assert code == 0, err
    assert "at batch 2 on cpu (float32): timed" in out
    search = isoprune.load(out_dir).isoprune_plan.search
    assert search["metric"] == "latency" and search["after"] <= search["budget"] == pytest.approx(0.7 * search["before"])


def test_existing_output_is_kept(capsys, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "mine.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "prune", "--model", "test_resnet", "--weights", "none", "--ratios", "0.3", "--out", out_dir)
    assert code == 2 and "not empty" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out_dir.iterdir()] == ["mine.txt"]


def test_offline_pretrained_is_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path), TORCH_HOME=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "isoprune.cli", "prune", "--model", "test_resnet", "--ratios", "0.3", "--dry-run"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("isoprune: error: could not get pretrained weights"), done.stderr
    assert "--weights" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("argv, said", [
    (["--version"], "isoprune 0.1.0"),
    (["prune", "--help"], "usage: isoprune prune"),
    (["prune", "--ratio", "0.3"], "isoprune: error: prune: unrecognized arguments: --ratio 0.3; see isoprune prune --help"),
])
def test_help_version_and_bad_flags_answer_without_the_library(argv, said):
    """torch and timm take seconds to import: the command line imports them only once a command runs."""
    script = ("import sys\nfrom isoprune import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
              "print(sorted({'torch', 'timm', 'torch_pruning'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60)
    assert said in done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


@pytest.mark.parametrize("command, cls", [("finetune", _recipes.FinetuneConfig), ("ssl", _recipes.SSLConfig)])
def test_every_training_flag_says_what_it_does_its_default_and_its_range(capsys, command, cls):
    assert list(cls.HELP) == [f.name for f in fields(cls)]  # every field, in the order of the flags
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    said = " ".join(capsys.readouterr().out.split())  # argparse wraps the help at the terminal's width
    assert "--lr LR peak learning rate" in said and "(default 0.0005; above 0)" in said
    assert "--amp, --no-amp mixed precision on CUDA (--no-amp: float32) (default on)" in said


def test_the_package_gives_its_names_on_first_use():
    """``isoprune.prune`` and the rest are imported when first asked for; a name it lacks is an AttributeError."""
    script = ("import sys, isoprune\nloaded = 'torch' in sys.modules\nfrom isoprune import prune, Ratios, tokens\n"
              "every = [getattr(isoprune, name) for name in isoprune.__all__]\n"
              "print(loaded, 'torch' in sys.modules, set(isoprune.__all__) <= set(dir(isoprune)), callable(prune), tokens.__name__)\n"
              "try:\n    isoprune.pruen\nexcept AttributeError as err:\n    print(err)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == ["False True True True isoprune.tokens", "module 'isoprune' has no attribute 'pruen'"], done.stderr


def test_an_error_without_a_message_is_named_by_its_type():
    from isoprune._errors import first_line

    assert first_line(EOFError()) == "EOFError"  # where "".splitlines()[0] raised IndexError in the error path
    assert first_line(ValueError("bad header\nmore detail"), 3) == "ValueError: bad"
