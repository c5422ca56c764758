"""isoprune ssl: DINO with token reduction, end to end on the digits, and its parts."""
import json
from dataclasses import asdict

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import yaml

import isoprune
from isoprune import _finetune, _io, _recipes, _ssl, tokens

from conftest import run_cli, torchrun

FAST = ["--epochs", "2", "--batch-size", "128", "--out-dim", "256", "--hidden-dim", "128", "--bottleneck-dim", "32",
        "--warmup-epochs", "1", "--lr", "0.002", "--local-crops-number", "2"]


def test_ssl_trains_writes_a_usable_backbone_and_resumes_exactly(capsys, tmp_path, digits, tiny_vit):
    code, out, err = run_cli(capsys, "ssl", tiny_vit, "--data", digits, *FAST, "--tokens", "simprune", "--keep-rate", "0.7",
                             "--out", tmp_path / "full", "--json")
    assert code == 0, err
    result = json.loads(out)
    rows = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2] and all(np.isfinite(r["train_loss"]) and 0 <= r["knn_top1"] <= 100 for r in rows)
    assert result["last"]["keep_rate"] == 0.7 and 0.7 <= result["last"]["kept"] < 0.72  # whole tokens: 45 of 64 ...
    for name in ("checkpoint.safetensors", "config.yaml", "curves.png", "metrics.csv", "backbone/model.safetensors"):
        assert (tmp_path / "full" / name).is_file(), name
    # the backbone is the teacher's, a plain timm ViT that fine-tuning and eval can load
    backbone = isoprune.load(tmp_path / "full" / "backbone")
    assert tokens.pruner_of(backbone) is None and all("forward" not in b.__dict__ for b in backbone.blocks)
    saved = safetensors.torch.load_file(str(tmp_path / "full" / "checkpoint.safetensors"))
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, saved[f"teacher.backbone.{key}"], rtol=0, atol=0)
    # two epochs at once, or one and a resumed one: the same weights
    assert run_cli(capsys, "ssl", tiny_vit, "--data", digits, *FAST, "--tokens", "simprune", "--keep-rate", "0.7",
                   "--out", tmp_path / "split", "--stop-after", "1")[0] == 0
    code, _, err = run_cli(capsys, "ssl", tiny_vit, "--data", digits, "--out", tmp_path / "split", "--resume", "--keep-rate", "0.5")
    assert code == 2 and "--keep-rate 0.5 differs from the resumed run's 0.7: a resumed run keeps its settings" in err, err
    assert run_cli(capsys, "ssl", tiny_vit, "--data", digits, "--out", tmp_path / "split", "--resume", "--keep-rate", "0.7")[0] == 0
    resumed = safetensors.torch.load_file(str(tmp_path / "split" / "checkpoint.safetensors"))
    assert resumed.keys() == saved.keys()
    for key in saved:
        torch.testing.assert_close(resumed[key], saved[key], rtol=0, atol=0, msg=key)


def test_dynamic_simprune_on_a_width_pruned_vit_trains_its_gates_and_resumes_exactly(capsys, tmp_path, digits):
    torch.manual_seed(0)
    model = isoprune.create_model("vit_tiny_patch16_224", "none", num_classes=10, img_size=32, patch_size=4, embed_dim=48,
                                  depth=4, num_heads=3)
    isoprune.prune(model, {"emb": 0.5, "mlp": 0.5})  # DINO's head takes the pruned width
    narrow = isoprune.save(model, tmp_path / "narrow")
    args = [narrow, "--data", digits, *FAST, "--tokens", "simprune", "--dynamic", "--token-sparsity", "5"]
    code, out, err = run_cli(capsys, "ssl", *args, "--out", tmp_path / "full")
    assert code == 0, err
    assert "simprune (dynamic)" in out and "of patch tokens kept" in out
    saved = safetensors.torch.load_file(str(tmp_path / "full" / "checkpoint.safetensors"))
    gates = [k for k in saved if "token_gates" in k]
    assert {k.split(".")[0] for k in gates} == {"student", "teacher"} and len(gates) == 2 * 3 * 4  # 3 blocks, 4 tensors
    assert not any("token_gates" in k for k in isoprune.load(tmp_path / "full" / "backbone").state_dict())
    assert run_cli(capsys, "ssl", *args, "--out", tmp_path / "split", "--stop-after", "1")[0] == 0
    assert run_cli(capsys, "ssl", narrow, "--data", digits, "--out", tmp_path / "split", "--resume")[0] == 0
    resumed = safetensors.torch.load_file(str(tmp_path / "split" / "checkpoint.safetensors"))
    assert resumed.keys() == saved.keys()
    for key in saved:
        torch.testing.assert_close(resumed[key], saved[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("path", _recipes.available("ssl"), ids=lambda p: p.stem)
def test_every_ssl_recipe_runs_through_the_cli(capsys, tmp_path, digits, tiny_vit, path):
    code, _, err = run_cli(capsys, "ssl", tiny_vit, "--data", digits, "--recipe", f"ssl/{path.stem}", "--epochs", "1",
                           "--batch-size", "128", "--out-dim", "256", "--token-blocks", "1", "2", "3", "--out", tmp_path / "run")
    assert code == 0, err
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["ssl"]
    small = {"epochs": 1, "batch_size": 128, "out_dim": 256, "token_blocks": [1, 2, 3]}  # the recipe's rest as it is
    assert written == {**asdict(_recipes.load_recipe(path).ssl), **small}


def test_ssl_from_a_timm_name_without_token_reduction(capsys, caplog, tmp_path, digits):
    code, out, err = run_cli(capsys, "ssl", "--model", "test_vit", "--data", digits, "--input-size", "32", *FAST,
                             "--epochs", "1", "--tokens", "none", "--local-crops-number", "0", "--out", tmp_path / "run")
    assert code == 0, err
    assert "k-NN top-1" in out and (tmp_path / "run" / "backbone" / "isoprune.json").is_file()
    # trained at 32 (test_vit's own size is 160), its position embeddings resampled: rebuilt so, and used at 32
    backbone = tmp_path / "run" / "backbone"
    code, out, err = run_cli(capsys, "eval", backbone, "--json", "--iters", "1", "--warmup", "0")
    assert code == 0, err
    assert json.loads(out)["input_size"] == [3, 32, 32]
    code, _, err = run_cli(capsys, "eval", backbone, "--data", digits)  # its 1000-class head: no new head would do
    assert code == 2 and f"isoprune finetune {backbone} --data {digits} --num-classes 10" in err
    code, _, err = run_cli(capsys, "eval", backbone, "--data", digits, "--num-classes", "10")  # was ignored: the same error again
    assert code == 2 and "--num-classes gives a saved model no new head" in err
    # trained whole, it has no original to learn from: the default teacher is none, not an error
    code, out, err = run_cli(capsys, "finetune", backbone, "--data", digits, "--num-classes", "10", "--epochs", "1",
                             "--batch-size", "128", "--no-augment", "--out", tmp_path / "tuned", "--json")
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", tmp_path / "tuned" / "best", "--data", digits, "--json", "--iters", "1", "--warmup", "0")
    assert code == 0, err
    assert json.loads(out)["input_size"] == [3, 32, 32]
    # pruned, it has an original, but one whose classifier never learnt: no teacher by default, with a warning
    assert run_cli(capsys, "prune", "--model", backbone, "--target", "60%", "--out", tmp_path / "pruned")[0] == 0
    assert _finetune.teacher("original", _io.read_metadata(tmp_path / "pruned"), 1000, side=32) is None  # its own classes too
    with caplog.at_level("WARNING", logger="isoprune"):
        code, out, err = run_cli(capsys, "finetune", tmp_path / "pruned", "--data", digits, "--num-classes", "10", "--epochs", "1",
                                 "--batch-size", "128", "--no-augment", "--out", tmp_path / "pruned-tuned")
    assert code == 0, err
    assert f"no teacher: {backbone}, the closest trained model this one came from, was pre-trained without labels" in caplog.text
    code, _, err = run_cli(capsys, "finetune", tmp_path / "pruned", "--data", digits, "--num-classes", "10", "--epochs", "1",
                           "--teacher", backbone, "--out", tmp_path / "taught")  # given by hand: an error, not a silent no
    assert code == 2 and f"teacher {backbone} was pre-trained without labels (isoprune ssl): its classifier never learnt" in err, err


def test_ssl_under_torchrun_with_replayed_choices(tmp_path, digits, tiny_vit):
    """Two CPU processes (gloo): DDP around the reduced student, the centre all-reduced."""
    done = torchrun("-m", "isoprune.cli", "ssl", tiny_vit, "--data", digits, *FAST, "--epochs", "1", "--tokens", "simprune",
                    "--replay", "--out", tmp_path / "two", "--json")
    assert len([line for line in done.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 alone reports
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())[0]["epoch"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--tokens", "fast"], "unknown token method"),
    (["--keep-rate", "1.5"], "keep rate 1.5"),
    (["--method", "byol"], "unknown self-supervised method"),
    (["--batch-size", "4096"], "fewer than one batch"),
    (["--resume"], "nothing to resume"),
    (["--replay", "--dynamic"], "cannot replay"),
    (["--tokens", "evit", "--dynamic"], "dynamic variant is SimPrune's"),
])
def test_bad_ssl_input_is_one_line_and_exit_2(capsys, tmp_path, digits, tiny_vit, argv, message):
    code, _, err = run_cli(capsys, "ssl", tiny_vit, "--data", digits, "--out", tmp_path / "run", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # nothing to clear away before the next try


def test_a_run_that_fails_in_its_first_epoch_leaves_nothing_behind(capsys, tmp_path, digits, tiny_vit):
    code, _, err = run_cli(capsys, "ssl", tiny_vit, "--data", digits, "--out", tmp_path / "run", *FAST, "--lr", "1e30")
    assert code == 2 and err.strip().splitlines()[-1].startswith("isoprune: error: the loss is nan at epoch 1"), err
    assert not (tmp_path / "run").exists()  # a second try needs no --force


def test_ssl_needs_a_vit(capsys, tmp_path, digits):
    code, _, err = run_cli(capsys, "ssl", "--model", "test_resnet", "--data", digits, "--out", tmp_path / "run")
    assert code == 2 and "VisionTransformer" in err, err


def test_ssl_leaves_a_non_empty_out_alone(capsys, tmp_path, digits, tiny_vit):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("keep")
    code, _, err = run_cli(capsys, "ssl", tiny_vit, "--data", digits, "--out", tmp_path / "run")
    assert code == 2 and "not empty" in err
    assert (tmp_path / "run" / "mine.txt").read_text() == "keep"


def test_dino_loss_pairs_each_teacher_view_with_the_other_student_views():
    cfg = _recipes.SSLConfig(epochs=2, out_dim=8, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=1)
    loss = _ssl.DINOLoss(8, cfg, steps_per_epoch=3)
    assert loss.teacher_temp[0] == pytest.approx(0.04) and loss.teacher_temp[2] == pytest.approx(0.07) and len(loss.teacher_temp) == 6
    torch.manual_seed(0)
    teacher, student = torch.randn(4, 8), torch.randn(8, 8)  # 2 global views of 2 images; 2 local crops
    got = loss(student, teacher, step=5)
    t = torch.softmax(teacher / 0.07, -1).chunk(2)
    s = torch.log_softmax(student / 0.1, -1).chunk(4)
    pairs = [-(t[i] * s[j]).sum(-1).mean() for i in range(2) for j in range(4) if i != j]
    torch.testing.assert_close(got, torch.stack(pairs).mean())
    torch.testing.assert_close(loss.center, 0.1 * teacher.mean(0, keepdim=True))


def test_knn_finds_the_class_of_separable_features():
    class Features(torch.nn.Module):
        def forward_features(self, x):
            return x

        def forward_head(self, x, pre_logits=False):
            return x

    labels = torch.arange(40) % 4
    points = torch.nn.functional.one_hot(labels, 4).float() + 0.05 * torch.randn(40, 4)
    loader = [(points, labels)]
    assert _ssl.knn_top1(Features(), loader, loader, torch.device("cpu"), k=5) == 100.0


def test_cosine_schedule_warms_up_then_decays():
    values = _ssl.cosine(1.0, 0.1, steps=10, warmup_steps=4)
    assert len(values) == 10 and values[0] == 0.0 and values[3] == 1.0 and values[4] == 1.0
    assert np.all(np.diff(values[4:]) < 0) and values[-1] > 0.1


def test_a_keep_rate_that_drops_no_token_at_the_input_size_is_warned_of(caplog):
    backbone = timm.create_model("test_vit")  # patch 16, 6 blocks: reducing at 1, 3 and 4
    pruner = tokens.apply(backbone, "simprune", keep_rate=0.8)
    assert pruner.kept_after(4) == 4 and pruner.kept_after(16) == 9  # 16 -> 13 -> 11 -> 9
    with caplog.at_level("WARNING", logger="isoprune"):
        _ssl._warn_if_nothing_dropped(pruner, backbone, (3, 64, 64))
        assert not caplog.text
        _ssl._warn_if_nothing_dropped(pruner, backbone, (3, 32, 32))
    assert "simprune at keep rate 0.80 keeps all 4 patch tokens of a 32x32 image (patch 16)" in caplog.text
    assert "give a larger input_size or a lower keep_rate" in caplog.text
