"""The memory check before training: what it measures, and what a user sees when a batch cannot fit."""
import json
import logging

import pytest
import torch
from torch import nn

from isoprune import PruningPlan, _memory, cli

CPU = torch.device("cpu")


def small_net() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))


@pytest.mark.parametrize("n", [1, 3, 8])
def test_saved_bytes_counts_each_kept_activation_once_and_no_parameter(n):
    net = small_net()
    # kept for backward: the input (the first weight's gradient) and the ReLU's output, which the
    # ReLU and the second layer both keep; the weights are the model's own
    assert _memory.saved_bytes(net, lambda: net(torch.randn(n, 10))) == 4 * n * (10 + 20)


def test_per_image_leaves_running_statistics_and_random_numbers_as_they_were():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5)).train()
    before = [b.clone() for b in net.buffers()]
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    slope, fixed = _memory.per_image(net, lambda n: net(torch.randn(n, 3, 6, 6)), CPU)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers()))
    # per image: the conv's input and output (BatchNorm's input), the ReLU's output (BatchNorm's
    # output is not kept: ReLU keeps its own) and dropout's mask (float32 on a CPU); BatchNorm's
    # running and batch statistics do not grow with the batch
    assert slope == 4 * 3 * 36 + 3 * (4 * 8 * 16) and 0 < fixed < 200


def test_cgroup_room_is_the_limit_less_what_is_used(tmp_path):
    (tmp_path / "memory.max").write_text("1073741824\n")
    (tmp_path / "memory.current").write_text("73741824\n")
    assert _memory.cgroup_room(tmp_path) == 1_000_000_000
    (tmp_path / "memory.max").write_text("max\n")
    assert _memory.cgroup_room(tmp_path) is None
    assert _memory.cgroup_room(tmp_path / "missing") is None


def check(monkeypatch, free: int, batch: int, **kwargs):
    monkeypatch.setattr(_memory, "free_bytes", lambda device: free)
    net = small_net()
    processes = kwargs.get("processes", 1)
    _memory.check_batch(net, lambda n: net(torch.randn(n, 10)), batch, CPU, copies=_memory.training_copies(2, processes), **kwargs)


def test_a_batch_is_refused_with_the_largest_that_fits(monkeypatch, caplog):
    weights = 4 * (10 * 20 + 20 + 20 * 5 + 5)  # 1300 bytes; with gradients and AdamW's two states: 3900
    per_image = 4 * 30
    headroom = _memory.HEADROOM["cpu"]

    def need(b, copies=3):
        return headroom * (copies * weights + per_image * b)

    check(monkeypatch, free=10**9, batch=1024)  # plenty
    with caplog.at_level(logging.WARNING, logger="isoprune"):  # fits, with little to spare
        check(monkeypatch, free=int(need(1024) * 1.1), batch=1024)
    assert "it may run out of memory" in caplog.text
    with pytest.raises(_memory.IsopruneError) as refused:
        check(monkeypatch, free=int(need(100)), batch=1024)
    assert ("needs about 0.2 MiB (0.0 MiB of activations per image, measured, and 1.6x for the allocator), "
            "more than the 0.0 MiB free on cpu") in str(refused.value)
    assert "pass batch_size=64" in refused.value.hint
    with pytest.raises(_memory.IsopruneError) as refused:  # two processes on this CPU: half the batch each, and DDP's buckets
        check(monkeypatch, free=int(2 * need(100, copies=4)), batch=1024, processes=2, local_processes=2)
    assert "shared by 2 processes" in str(refused.value) and "pass batch_size=128" in refused.value.hint
    with pytest.raises(_memory.IsopruneError) as refused:
        check(monkeypatch, free=int(need(1)), batch=1024)
    assert "does not fit at any batch size" in refused.value.hint


def test_a_calibration_batch_that_cannot_fit_goes_in_pieces(monkeypatch, caplog):
    weights = 4 * (10 * 20 + 20 + 20 * 5 + 5)
    per_image = 4 * 30
    headroom, spare = _memory.HEADROOM["cpu"], _memory.WARN

    def piece(free: int):
        monkeypatch.setattr(_memory, "free_bytes", lambda device: free)
        net = small_net()
        return _memory.piece_size(net, lambda n: net(torch.randn(n, 10)), 100, CPU, copies=1, what="calibration batch")

    assert piece(10**9) is None  # the whole batch fits
    with caplog.at_level(logging.INFO, logger="isoprune"):  # room for 30 images beside two model sizes: 4 pieces of 25
        assert piece(int(headroom * spare * (2 * weights + per_image * 30)) + 1) == 25
    assert "in 4 pieces of at most 25 images, whose gradients add up to the batch's" in caplog.text
    assert piece(int(headroom * (2 * weights + per_image))) == 1  # one image, with little to spare
    with pytest.raises(_memory.IsopruneError) as refused:
        piece(int(headroom * (2 * weights + per_image)) - 1)
    assert str(refused.value).startswith("one image of a calibration batch needs about 0.0 MiB")


def test_finetune_refuses_a_batch_that_cannot_fit_before_it_writes_anything(monkeypatch, capsys, tmp_path, digits):
    monkeypatch.setattr(_memory, "free_bytes", lambda device: 200 * 2**20)
    out = tmp_path / "ft"
    code = cli.main(["finetune", "--model", "test_resnet", "--weights", "none", "--num-classes", "10", "--data", str(digits),
                     "--input-size", "64", "--epochs", "1", "--batch-size", "1024", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("isoprune: error: a batch of 1024 per process needs about") and "64x64 image" in err
    assert "more than the 200.0 MiB free on cpu; pass --grad-accum-steps" in err and "or a smaller --batch-size" in err
    steps = int(err.split("--grad-accum-steps ")[1].split()[0])
    assert 2 <= steps < 1024 and f"({steps} steps of {1024 // steps} images per process make the same batch)" in err
    assert not out.exists()
    code = cli.main(["finetune", "--model", "test_resnet", "--weights", "none", "--num-classes", "10", "--data", str(digits),
                     "--input-size", "64", "--epochs", "1", "--stop-after", "1", "--batch-size", "1024", "--grad-accum-steps", str(steps),
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())[0]["epoch"] == 1


def test_prune_calibrates_a_batch_that_cannot_fit_in_pieces_to_the_same_plan(monkeypatch, capsys, caplog, tmp_path, digits):
    import timm

    argv = ["prune", "--model", "test_vit", "--weights", "none", "--num-classes", "10", "--data", str(digits), "--input-size", "32",
            "--target", "50%", "--batch-size", "64", "--calib-batches", "2", "--importance", "hessian"]
    assert cli.main([*argv, "--out", str(tmp_path / "whole")]) == 0
    monkeypatch.setattr(_memory, "free_bytes", lambda device: 10**12)
    model = timm.create_model("test_vit", num_classes=10, img_size=32).eval()
    estimate = _memory.Estimate(model, lambda n: model(torch.randn(n, 3, 32, 32)), CPU, copies=1)
    monkeypatch.setattr(_memory, "free_bytes", lambda device: int(estimate.need(20, extra_copies=1) * _memory.WARN))
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="isoprune"):
        assert cli.main([*argv, "--out", str(tmp_path / "pieces")]) == 0
    assert "a calibration batch of 64 needs about" in caplog.text and "in 4 pieces of at most 16 images" in caplog.text
    assert "calibration in pieces of 16" in capsys.readouterr().err  # the progress bar says it, where the log is quiet
    whole, pieces = (PruningPlan.load(tmp_path / name / "plan.yaml") for name in ("whole", "pieces"))
    assert [g.keep for g in pieces.groups] == [g.keep for g in whole.groups] and pieces.macs == whole.macs
    monkeypatch.setattr(_memory, "free_bytes", lambda device: 2**10)  # not even one image
    capsys.readouterr()
    code = cli.main([*argv, "--out", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("isoprune: error: one image of a calibration batch needs about") and "32x32 image" in err
    assert not (tmp_path / "none").exists()
    assert cli.main([*argv[:-2], "--importance", "l2", "--out", str(tmp_path / "l2")]) == 0  # nothing to calibrate: nothing kept for backward
