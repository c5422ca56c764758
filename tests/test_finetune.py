"""Fine-tuning and evaluation end to end on real data: scikit-learn's handwritten digits."""
import json
import os
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

import isoprune
from isoprune import _finetune, _io, cli
from isoprune._errors import UnreachableError

from conftest import run_cli, torchrun

SIZE = ["--input-size", "32"]


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """A small ResNet trained from scratch on the digits for a few seconds."""
    out = tmp_path_factory.mktemp("runs") / "base"
    code = cli.main(["finetune", "--model", "test_resnet", "--weights", "none", "--num-classes", "10", "--data", str(digits),
                     *SIZE, "--epochs", "8", "--batch-size", "64", "--opt", "adamw", "--lr", "0.003", "--weight-decay", "0.01",
                     "--out", str(out)])
    assert code == 0
    return out


def evaluate(capsys, path, digits):
    code, out, err = run_cli(capsys, "eval", path, "--data", digits, *SIZE, "--iters", "2", "--warmup", "1", "--json")
    assert code == 0, err
    return json.loads(out)


def test_prune_drops_accuracy_and_distillation_brings_it_back(capsys, tmp_path, digits, trained):
    base = evaluate(capsys, trained / "best", digits)
    assert base["top1"] > 85, base
    code, _, err = run_cli(capsys, "prune", "--model", "test_resnet", "--num-classes", "10", "--weights", trained / "best",
                           "--target", "50%", *SIZE, "--out", tmp_path / "pruned")
    assert code == 0, err
    pruned = evaluate(capsys, tmp_path / "pruned", digits)
    assert pruned["macs"] <= 0.5 * base["macs"] and pruned["params"] < base["params"]
    assert pruned["top1"] < base["top1"] - 20, (pruned, base)
    code, out, err = run_cli(capsys, "finetune", tmp_path / "pruned", "--data", digits, *SIZE, "--epochs", "6", "--batch-size", "64",
                             "--lr", "0.002", "--teacher", "original", "--distillation", "soft", "--out", tmp_path / "ft", "--json")
    assert code == 0, err
    recovered = evaluate(capsys, tmp_path / "ft" / "best", digits)
    assert recovered["top1"] >= base["top1"] - 6, (recovered, base)  # the margin this test promises
    assert recovered["macs"] == pruned["macs"]
    history = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, 7))
    assert (tmp_path / "ft" / "curves.png").stat().st_size > 10_000
    assert (tmp_path / "ft" / "metrics.csv").read_text().startswith("epoch,lr,train_loss,val_loss,top1,top5,seconds")


def test_a_model_trained_whole_and_then_pruned_has_one_plan(capsys, tmp_path, trained):
    """The plan a model trained whole is saved with removes nothing: it is no earlier pruning."""
    code, _, err = run_cli(capsys, "prune", "--model", trained / "best", "--target", "60%", "--out", tmp_path / "pruned")
    assert code == 0, err
    assert "earlier" not in _io.read_metadata(tmp_path / "pruned")
    assert not getattr(isoprune.load(tmp_path / "pruned"), "isoprune_earlier", [])
    code, out, err = run_cli(capsys, "inspect", tmp_path / "pruned")
    assert code == 0, err
    assert f"\npruned from {trained / 'best'}\n" in out + "\n" and "pruned further" not in out


def _finetune_args(source, digits, out, *extra):
    return ["finetune", source, "--data", digits, *SIZE, "--epochs", "3", "--batch-size", "32", "--lr", "0.002",
            "--teacher", "none", "--mixup", "0.2", "--cutmix", "1.0", "--reprob", "0.25", "--ema-decay", "0.9",
            "--out", out, *extra]


def _weights(path):
    return safetensors.torch.load_file(str(path / "model.safetensors"))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(capsys, tmp_path, digits, trained):
    assert run_cli(capsys, *_finetune_args(trained / "best", digits, tmp_path / "whole"))[0] == 0
    assert run_cli(capsys, *_finetune_args(trained / "best", digits, tmp_path / "split", "--stop-after", "2"))[0] == 0
    assert json.loads((tmp_path / "split" / "last" / "isoprune.json").read_text())["epoch"] == 2
    # what it learns with is the run's: a different setting would be ignored, so it is refused
    code, _, err = run_cli(capsys, *_finetune_args(trained / "best", digits, tmp_path / "split", "--resume", "--lr", "0.1"))
    assert code == 2 and "--lr 0.1 differs from the resumed run's 0.002: a resumed run keeps its settings" in err, err
    assert run_cli(capsys, *_finetune_args(trained / "best", digits, tmp_path / "split", "--resume"))[0] == 0
    for which in ("last", "best"):
        whole, split = _weights(tmp_path / "whole" / which), _weights(tmp_path / "split" / which)
        assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole)
    assert json.loads((tmp_path / "whole" / "metrics.json").read_text())[-1]["top1"] == \
        json.loads((tmp_path / "split" / "metrics.json").read_text())[-1]["top1"]


def test_a_plateau_schedule_is_told_each_epochs_accuracy(capsys, tmp_path, digits, trained, monkeypatch):
    """timm's plateau schedule decays when the metric it is given stops improving: stepped without
    one, it would keep the learning rate whatever happens."""
    from timm.scheduler.plateau_lr import PlateauLRScheduler

    told, step = [], PlateauLRScheduler.step
    monkeypatch.setattr(PlateauLRScheduler, "step", lambda self, epoch, metric=None: (told.append(metric), step(self, epoch, metric))[1])
    code, _, err = run_cli(capsys, "finetune", trained / "best", "--data", digits, *SIZE, "--epochs", "2", "--batch-size", "32",
                           "--teacher", "none", "--sched", "plateau", "--out", tmp_path / "run")
    assert code == 0, err
    assert told[-2:] == [row["top1"] for row in json.loads((tmp_path / "run" / "metrics.json").read_text())]


def test_a_crash_while_checkpointing_keeps_the_previous_checkpoint(capsys, tmp_path, digits, trained, monkeypatch):
    calls = []
    real = os.replace

    def crash_on_second(src, dst):
        if str(dst).endswith(_finetune.CHECKPOINT):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(_finetune.os, "replace", crash_on_second)
    with pytest.raises(OSError):
        cli.main([str(a) for a in _finetune_args(trained / "best", digits, tmp_path / "run")])
    monkeypatch.setattr(_finetune.os, "replace", real)
    with safetensors.safe_open(str(tmp_path / "run" / _finetune.CHECKPOINT), "pt") as f:
        assert json.loads(f.metadata()["isoprune"])["epoch"] == 1
    # how it runs may change on resume: the same batch in steps, as on a device with less memory
    assert run_cli(capsys, *_finetune_args(trained / "best", digits, tmp_path / "run", "--resume", "--grad-accum-steps", "2"))[0] == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())[-1]["epoch"] == 3
    with safetensors.safe_open(str(tmp_path / "run" / _finetune.CHECKPOINT), "pt") as f:
        assert json.loads(f.metadata()["isoprune"])["finetune"]["grad_accum_steps"] == 2


def test_two_processes_train_what_one_does(tmp_path, digits):
    """torchrun with 2 CPU processes (gloo), same global batch: the same final weights; and the
    same again with each process's batch taken in 4 steps of gradient accumulation (a ConvNeXt:
    LayerNorm, so a piece of the batch is normalised as the whole would be)."""
    args = ["-m", "isoprune.cli", "finetune", "--model", "test_convnext", "--weights", "none", "--num-classes", "10", "--data",
            digits, *SIZE, "--epochs", "2", "--batch-size", "32", "--opt", "sgd", "--lr", "0.05", "--no-augment", "--teacher", "none"]
    torchrun(*args, "--out", tmp_path / "one", processes=1)
    torchrun(*args, "--out", tmp_path / "two")
    torchrun(*args, "--grad-accum-steps", "4", "--out", tmp_path / "two-in-steps")
    a = _weights(tmp_path / "one" / "last")
    for other in ("two", "two-in-steps"):
        b = _weights(tmp_path / other / "last")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4, msg=f"{other}: {key}")
    rows_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    rows_two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert rows_one[-1]["top1"] == pytest.approx(rows_two[-1]["top1"], abs=0.6)  # all 360 val images, counted once


def test_a_pruned_distilled_deit_learns_through_its_dist_token(tmp_path, digits, trained):
    """The paper's DeiT recipe in small: a distilled DeiT, width-pruned, fine-tuned from the Python
    API with hard distillation from a CNN teacher (the ResNet trained above, as the paper uses a
    RegNet). The dist head sees only the teacher's labels, so its own accuracy shows it learned."""
    torch.manual_seed(0)
    deit = isoprune.create_model("deit_tiny_distilled_patch16_224", "none", num_classes=10, img_size=32, patch_size=4,
                                 depth=4, embed_dim=96, num_heads=4)
    isoprune.prune(deit, isoprune.Ratios(emb=0.25, heads=0.25, head_dim=0.25, mlp=0.5))
    isoprune.save(deit, tmp_path / "pruned")
    result = isoprune.finetune(tmp_path / "pruned", digits, tmp_path / "run", teacher=str(trained / "best"), distillation="hard",
                               epochs=12, batch_size=64, lr=3e-3, warmup_epochs=1, augment=False)
    assert result["best"]["top1"] > 50, result
    model = isoprune.load(tmp_path / "run" / "best").eval()
    assert model.head_dist.in_features == deit.head_dist.in_features == 72  # the pruned width, kept
    images, labels = _val_batch(model, digits)
    with torch.no_grad():
        tokens = model.forward_features(images)
        by_dist = model.head_dist(tokens[:, 1]).argmax(1)
    assert (by_dist == labels).float().mean() > 0.4


def _val_batch(model, digits):
    import timm.data

    from isoprune import _data

    dataset = _data.image_folder(digits / "val", timm.data.create_transform(**_data.data_config(model), is_training=False))
    return torch.stack([image for image, _ in dataset]), torch.tensor(dataset.targets)


def test_a_validation_folder_that_lacks_a_class_is_labelled_as_train_labels_it(tmp_path, digits, trained):
    """ImageFolder numbers a folder's own classes: without "3", val/ would label each digit from 4 on as the one before."""
    from isoprune import _data

    partial = tmp_path / "partial"
    shutil.copytree(digits / "val", partial / "val", ignore=lambda folder, names: ["3"] if Path(folder) == digits / "val" else [])
    (partial / "train").symlink_to(digits / "train")
    val = _data.image_folder(partial / "val", None, classes=_data.class_names(partial / "train"))
    assert len(val.classes) == 10 and "3" not in {Path(p).parent.name for p, _ in val.samples}
    assert all(val.classes[t] == Path(p).parent.name for p, t in val.samples)
    whole = isoprune.evaluate(trained / "best", digits, warmup=0, iters=1)
    part = isoprune.evaluate(trained / "best", partial, warmup=0, iters=1)
    assert part["images"] == whole["images"] - len(list((digits / "val" / "3").iterdir()))
    assert whole["top1"] > 60 and abs(part["top1"] - whole["top1"]) < 5  # mislabelled, it would score about a third of that
    (partial / "val" / "zz").mkdir()
    shutil.copy(next((digits / "val" / "0").iterdir()), partial / "val" / "zz")
    with pytest.raises(isoprune.IsopruneError, match="partial/val has classes the training data lacks: zz"):
        isoprune.evaluate(trained / "best", partial, warmup=0, iters=1)


def test_finetune_from_python_rejects_unknown_settings(tmp_path, digits, trained):
    with pytest.raises(isoprune.IsopruneError, match="unknown fine-tuning setting 'epoch'"):
        isoprune.finetune(trained / "best", digits, tmp_path / "x", epoch=3)
    with pytest.raises(isoprune.IsopruneError, match="weights are for a model given by name"):
        isoprune.finetune(trained / "best", digits, tmp_path / "x", weights="none")
    assert not (tmp_path / "x").exists()


def test_evaluate_refuses_weights_for_a_saved_model(capsys, trained):
    """They were ignored: ``eval DIR --weights PATH`` reported the directory's own weights."""
    with pytest.raises(isoprune.IsopruneError, match="weights are for a model given by name"):
        isoprune.evaluate(trained / "best", weights="none")
    code, _, err = run_cli(capsys, "eval", trained / "best", "--weights", "none")
    assert code == 2 and err.startswith(f"isoprune: error: weights are for a model given by name, not the directory {trained / 'best'}")


CALIBRATE = """
import sys
import safetensors.torch
from isoprune import _dist, _importance, _io, _pipeline
env, device = _dist.start("cpu")
model = _io.load(sys.argv[1])
batches = _pipeline.calibration_batches(sys.argv[2], model, 16, seed=0, limit=5, rank=env.rank, world=env.world)
stats = _importance.calibrate(model, batches, stats=("grad", "sq_grad"))
names = {p: n for n, p in model.named_parameters()}
if env.main:
    safetensors.torch.save_file({f"{s}/{names[p]}": t for s, per in stats.items() for p, t in per.items()}, sys.argv[3])
_dist.stop(env)
"""


def test_calibration_spread_over_processes_is_the_single_process_mean(tmp_path, digits, trained):
    """5 batches: 3 in one process, 2 in the other; the all-reduced means are one process's means."""
    script = tmp_path / "calibrate.py"
    script.write_text(CALIBRATE)
    for processes in (1, 2):
        torchrun(script, trained / "best", digits, tmp_path / f"{processes}.safetensors", processes=processes)
    one, two = (safetensors.torch.load_file(str(tmp_path / f"{n}.safetensors")) for n in (1, 2))
    assert one.keys() == two.keys() and any(t.abs().sum() > 0 for t in one.values())
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-9, msg=key)


def test_calibration_images_come_at_the_pruning_input_size(digits, trained):
    from isoprune import _pipeline

    model = isoprune.load(trained / "best")
    for size, expected in ((48, 48), (None, 32)):  # by default the size it was trained at (its config says 160)
        images, _ = next(iter(_pipeline.calibration_batches(digits, model, 4, limit=1, input_size=size)))
        assert images.shape == (4, 3, expected, expected)


def test_taylor_prune_under_torchrun_plans_what_one_process_does(tmp_path, digits, trained):
    args = ["-m", "isoprune.cli", "prune", "--model", "test_resnet", "--num-classes", "10", "--weights", trained / "best",
            "--importance", "taylor", "--data", digits, "--calib-batches", "6", "--batch-size", "16", "--ratios", "0.4", *SIZE]
    torchrun(*args, "--out", tmp_path / "one", processes=1)
    two = torchrun(*args, "--out", tmp_path / "two", "--json")
    assert len([line for line in two.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 alone reports
    assert (tmp_path / "one" / "plan.yaml").read_text() == (tmp_path / "two" / "plan.yaml").read_text()


def _bad(tmp_path, digits, trained):
    no_val = tmp_path / "no_val"
    (no_val / "train" / "a").mkdir(parents=True)
    broken = tmp_path / "broken"
    for split in ("train", "val"):
        for label in range(10):
            folder = broken / split / str(label)
            folder.mkdir(parents=True)
            for i in range(4):
                (folder / f"{i}.png").write_bytes(b"not a png")
    three = tmp_path / "three"
    for split in ("train", "val"):
        (three / split / "x").mkdir(parents=True)
    base = ["finetune", trained / "best", *SIZE, "--epochs", "1", "--batch-size", "8", "--teacher", "none"]
    return {
        "missing train": (base + ["--data", tmp_path / "nothing"], "no train/ directory"),
        "missing val": (base + ["--data", no_val], "no val/ directory"),
        "unreadable images": (base + ["--data", broken], "cannot read an image"),
        "class mismatch": (["finetune", "--model", "test_resnet", "--weights", "none", "--data", digits, *SIZE, "--epochs", "1"],
                           "pass --num-classes 10"),
        "nothing to resume": (base + ["--data", digits, "--resume"], "nothing to resume"),
        "no source": (["finetune", "--data", digits], "needs a pruned directory or --model"),
    }


@pytest.mark.parametrize("case", ["missing train", "missing val", "unreadable images", "class mismatch", "nothing to resume", "no source"])
def test_bad_input_is_one_line(capsys, tmp_path, digits, trained, case):
    argv, message = _bad(tmp_path, digits, trained)[case]
    code, out, err = run_cli(capsys, *argv, *([] if "--out" in argv else ["--out", tmp_path / "out"]))
    lines = [line for line in err.strip().splitlines() if line.startswith("isoprune:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_the_original_teacher_is_the_tagged_model_it_was_pruned_from(capsys, tmp_path):
    """Pruned from ``resnet18.tv_in1k`` with a checkpoint, ``--teacher original`` builds that tag
    (torchvision's data config, not the default tag's) with those weights."""
    state = timm.create_model("resnet18.tv_in1k", num_classes=10).state_dict()
    safetensors.torch.save_file(state, tmp_path / "tv.safetensors")
    code, _, err = run_cli(capsys, "prune", "--model", "resnet18.tv_in1k", "--weights", tmp_path / "tv.safetensors", "--num-classes", "10",
                           "--ratios", "0.3", "--input-size", "64", "--out", tmp_path / "p")
    assert code == 0, err
    teacher = _finetune.teacher("original", _io.read_metadata(tmp_path / "p"), 10, side=64)
    assert teacher.pretrained_cfg["tag"] == "tv_in1k" and teacher.pretrained_cfg["interpolation"] == "bilinear"
    assert torch.equal(teacher.fc.weight, state["fc.weight"])


def test_a_checkpoint_as_teacher_is_the_base_with_its_weights(capsys, tmp_path):
    """``--teacher FILE`` builds the student's base architecture, for the student's classes,
    with that checkpoint; a checkpoint for other classes is refused before it is built."""
    code, _, err = run_cli(capsys, "prune", "--model", "test_resnet", "--weights", "none", "--num-classes", "10",
                           "--ratios", "0.3", "--input-size", "64", "--out", tmp_path / "p")
    assert code == 0, err
    metadata = _io.read_metadata(tmp_path / "p")
    ten = timm.create_model("test_resnet", num_classes=10).state_dict()
    torch.save(ten, tmp_path / "ten.pth")
    teacher = _finetune.teacher(str(tmp_path / "ten.pth"), metadata, 10, side=64)
    assert torch.equal(teacher.fc.weight, ten["fc.weight"]) and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    safetensors.torch.save_file(timm.create_model("test_resnet").state_dict(), tmp_path / "thousand.safetensors")
    with pytest.raises(isoprune.IsopruneError, match=r"the student has 10 classes, but the teacher's weights \(.*thousand\.safetensors\) predict 1000"):
        _finetune.teacher(str(tmp_path / "thousand.safetensors"), metadata, 10, side=64)


def test_teacher_with_other_classes_is_refused(capsys, tmp_path, digits, trained):
    from timm import create_model

    other = create_model("test_resnet")  # 1000 classes
    other.isoprune_base = {"library": "timm", "name": "test_resnet", "kwargs": {}}
    isoprune.save(other, tmp_path / "teacher", plan=isoprune.plan(other, 0.0))
    code, _, err = run_cli(capsys, "finetune", trained / "best", "--data", digits, *SIZE, "--epochs", "1",
                           "--teacher", tmp_path / "teacher", "--out", tmp_path / "out")
    assert code == 2 and "the teacher predicts 1000 classes but the student 10" in err
    vit = create_model("deit_tiny_patch16_224", num_classes=10)  # takes 224x224 only; the student trains at 32x32
    vit.isoprune_base = {"library": "timm", "name": "deit_tiny_patch16_224", "kwargs": {"num_classes": 10}}
    isoprune.save(vit, tmp_path / "vit", plan=isoprune.plan(vit, 0.0))
    code, _, err = run_cli(capsys, "finetune", trained / "best", "--data", digits, *SIZE, "--epochs", "1",
                           "--teacher", tmp_path / "vit", "--out", tmp_path / "out")
    assert code == 2 and "the teacher takes 224x224 inputs only, but the student trains at 32x32" in err
    assert not (tmp_path / "out" / "best").exists()


def test_a_teacher_given_the_wrong_way_says_how_to_give_it(capsys, tmp_path, digits, trained, monkeypatch):
    args = ["finetune", trained / "best", "--data", digits, *SIZE, "--epochs", "1", "--out", tmp_path / "out"]
    code, _, err = run_cli(capsys, *args, "--teacher", trained / "best" / "model.safetensors")  # the file, not its directory
    assert code == 2 and f"is the weights file of a model isoprune saved; pass its directory as --teacher {trained / 'best'}" in err

    def offline(name, weights, **kwargs):
        if name.startswith("hf-hub:"):
            raise UnreachableError(f"cannot read the config of {name}: offline", what="config", hint="download it with huggingface-cli")
        raise UnreachableError(f"could not get pretrained weights for {name}: LocalEntryNotFoundError", what="weights",
                               hint="offline? pass --weights PATH for a local checkpoint, or --weights none for random init")

    monkeypatch.setattr(_finetune._models, "create", offline)
    for name in ("test_resnet", "test_resnet.r160_in1k"):  # a name with a pretrained tag, as the DeiT recipes' regnety_160.deit_in1k
        code, _, err = run_cli(capsys, *args, "--teacher", name)
        assert code == 2 and f"teacher {name}: could not get pretrained weights" in err and "pass --teacher PATH" in err, err
        assert "--weights" not in err and not (tmp_path / "out").exists()
    code, _, err = run_cli(capsys, *args, "--teacher", "hf-hub:me/teacher")  # the Hub's own hint says how to get it
    assert code == 2 and "teacher hf-hub:me/teacher: cannot read the config of hf-hub:me/teacher: offline; download it with huggingface-cli" in err, err
    code, _, err = run_cli(capsys, *args, "--teacher", tmp_path / "regnety.pth")
    assert code == 2 and f"no teacher checkpoint at {tmp_path / 'regnety.pth'}" in err


def test_a_trained_model_keeps_its_input_size(capsys, digits, trained):
    """Trained at 32x32 (``test_resnet``'s config says 160x160): evaluating it, or pruning its
    weights (its directory, or the weights file in it), without ``--input-size`` takes 32x32, as
    the directory records."""
    assert json.loads((trained / "best" / "isoprune.json").read_text())["input_size"] == [3, 32, 32]
    sized = evaluate(capsys, trained / "best", digits)
    code, out, err = run_cli(capsys, "eval", trained / "best", "--data", digits, "--iters", "1", "--warmup", "0", "--json")
    assert code == 0, err
    default = json.loads(out)
    assert default["input_size"] == [3, 32, 32] and (default["top1"], default["macs"]) == (sized["top1"], sized["macs"])
    for weights in (trained / "best", trained / "best" / "model.safetensors"):
        code, out, err = run_cli(capsys, "prune", "--model", "test_resnet", "--num-classes", "10", "--weights", weights,
                                 "--ratios", "0.3", "--dry-run", "--json")
        assert code == 0, err
        assert json.loads(out)["macs"]["before"] == sized["macs"]
    code, out, err = run_cli(capsys, "eval", "--model", "test_resnet", "--num-classes", "10", "--weights", trained / "best" / "model.safetensors",
                             "--data", digits, "--iters", "1", "--warmup", "0", "--json")
    assert code == 0, err
    assert (json.loads(out)["input_size"], json.loads(out)["top1"]) == ([3, 32, 32], sized["top1"])


def test_eval_without_data_reports_size_and_speed(capsys):
    code, out, err = run_cli(capsys, "eval", "--model", "test_resnet", "--weights", "none", "--iters", "3", "--warmup", "1",
                             "--batch-size", "2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert "top1" not in result and result["macs"] > 0 and result["latency_ms"] > 0 and result["throughput"] > 0


def test_eval_in_half_precision_and_channels_last_scores_what_float32_does(capsys, digits, trained):
    full = evaluate(capsys, trained / "best", digits)
    code, out, err = run_cli(capsys, "eval", trained / "best", "--data", digits, *SIZE, "--iters", "1", "--warmup", "0",
                             "--dtype", "bfloat16", "--channels-last", "--json")
    assert code == 0, err
    half = json.loads(out)
    assert (half["dtype"], half["channels_last"], full["dtype"], full["channels_last"]) == ("bfloat16", True, "float32", False)
    assert (half["macs"], half["params"], half["images"]) == (full["macs"], full["params"], 360)
    assert half["top1"] == pytest.approx(full["top1"], abs=1.5) and half["top1"] > 85
    assert "bfloat16, channels-last" in err


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_distillation_uses_the_dist_token_output_and_the_teacher(kind):
    torch.manual_seed(0)
    cfg = isoprune._recipes.FinetuneConfig(distillation=kind, distill_alpha=1.0, distill_tau=2.0)
    teacher = torch.nn.Linear(4, 3)
    loss = _finetune._Loss(cfg, mixup_on=False, teacher_model=teacher)
    images, targets = torch.randn(5, 4), torch.randint(0, 3, (5,))
    cls, dist = torch.randn(5, 3), teacher(images).detach()
    agree = loss((cls, dist), images, targets)  # alpha 1: only the distillation term, on the dist output
    disagree = loss((cls, -dist), images, targets)
    assert agree < disagree
    if kind == "soft":
        assert agree.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("path", isoprune._recipes.available(), ids=lambda p: p.stem)
def test_every_recipe_builds_its_optimiser_and_schedule(path):
    cfg = isoprune._recipes.load_recipe(path).finetune
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer, scheduler = _finetune.optimization(model, cfg, updates_per_epoch=10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.lr)
    scheduler.step(cfg.epochs // 2)
    assert 0 < optimizer.param_groups[0]["lr"] < cfg.lr
    assert cfg.teacher == "none" or cfg.distillation == "hard"  # the paper distils only DeiT, DeiT-style


def test_unknown_optimiser_is_one_line(capsys, tmp_path, digits, trained):
    code, _, err = run_cli(capsys, "finetune", trained / "best", "--data", digits, *SIZE, "--epochs", "1", "--opt", "adamx2",
                           "--teacher", "none", "--out", tmp_path / "out")
    assert code == 2 and "cannot build optimiser 'adamx2'" in err and len(err.strip().splitlines()) == 1, err


class _ListingSGD(torch.optim.SGD):
    """Keeps lists of tensors per parameter, as timm's Kron keeps its preconditioners."""

    def step(self, closure=None):
        super().step(closure)
        for p in (p for group in self.param_groups for p in group["params"]):
            self.state[p]["factors"] = [p.detach().flatten()[:2].clone(), torch.randn(3)]


@pytest.mark.parametrize("name", ["adamw", "lamb", "listing"])
def test_an_optimisers_state_survives_the_checkpoint_wherever_it_keeps_tensors(tmp_path, name):
    """LAMB keeps its step as a tensor in its parameter groups, Kron lists of tensors per parameter:
    the header is JSON, so those are stored as tensors too, and come back as they were."""
    from timm.optim import create_optimizer_v2

    def make():
        return _ListingSGD(model.parameters(), lr=1e-3, momentum=0.9) if name == "listing" else create_optimizer_v2(model, name, lr=1e-3)

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    optimizer = make()
    for _ in range(2):
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        optimizer.step()
    tensors, header = _finetune.optimizer_state(optimizer)
    _finetune.write_checkpoint(tmp_path, tensors, header)
    saved = _finetune.read_checkpoint_file(tmp_path)
    again = make()
    _finetune.load_optimizer_state(again, saved["tensors"], saved["header"])

    def flat(state, prefix=""):
        if isinstance(state, dict):
            return [item for k, v in state.items() for item in flat(v, f"{prefix}.{k}")]
        if isinstance(state, (list, tuple)):
            return [item for i, v in enumerate(state) for item in flat(v, f"{prefix}.{i}")]
        return [(prefix, state)]

    before, after = dict(flat(optimizer.state_dict())), dict(flat(again.state_dict()))
    assert sorted(before) == sorted(after)
    for key, a in before.items():
        assert (torch.equal(a, after[key]) if isinstance(a, torch.Tensor) else a == after[key]), key
