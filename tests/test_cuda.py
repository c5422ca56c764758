"""The GPU paths end to end on real data (the digits): training and fine-tuning with AMP, Taylor
calibration, DINO with token reduction, evaluation, and files that move between GPU and CPU.

CI has no GPU and skips these; on a machine with one: ``python -m pytest tests/test_cuda.py``.
(torchrun's NCCL path needs two GPUs: NCCL refuses two processes on one device.)
"""
import json

import pytest
import torch

import isoprune
from isoprune import _io, cli
from isoprune._plan import PruningPlan

from test_finetune import SIZE, evaluate, run_cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def trained_on_gpu(digits, tmp_path_factory):
    """test_finetune's small ResNet, trained on the GPU with AMP (bfloat16 where the GPU has it)."""
    out = tmp_path_factory.mktemp("gpu") / "base"
    code = cli.main(["finetune", "--model", "test_resnet", "--weights", "none", "--num-classes", "10", "--data", str(digits),
                     *SIZE, "--epochs", "8", "--batch-size", "64", "--opt", "adamw", "--lr", "0.003", "--weight-decay", "0.01",
                     "--device", "cuda", "--amp", "--out", str(out)])
    assert code == 0
    return out


def test_a_model_trained_on_the_gpu_scores_alike_on_gpu_and_cpu(capsys, digits, trained_on_gpu):
    on_cpu = evaluate(capsys, trained_on_gpu / "best", digits)
    code, out, err = run_cli(capsys, "eval", trained_on_gpu / "best", "--data", digits, *SIZE, "--device", "cuda", "--json")
    assert code == 0, err
    on_gpu = json.loads(out)
    assert on_gpu["device"] == "cuda:0" and on_gpu["throughput"] > 0
    assert on_cpu["top1"] > 85, on_cpu
    assert on_gpu["top1"] == pytest.approx(on_cpu["top1"], abs=0.6)  # 2 of the 360 images at most
    # as deployed: half precision, channels-last
    code, out, err = run_cli(capsys, "eval", trained_on_gpu / "best", "--data", digits, *SIZE, "--device", "cuda", "--dtype", "float16",
                             "--channels-last", "--json")
    assert code == 0, err
    assert json.loads(out)["top1"] == pytest.approx(on_cpu["top1"], abs=1.0)


def _keeps(path):
    plan = PruningPlan.from_dict(_io.read_metadata(path)["plan"])
    return {g.id: set(g.keep) for g in plan.groups}


def test_taylor_calibration_on_the_gpu_plans_what_the_cpu_does(capsys, tmp_path, digits, trained_on_gpu):
    summaries = {}
    for device in ("cpu", "cuda"):
        code, out, err = run_cli(capsys, "prune", "--model", "test_resnet", "--num-classes", "10", "--weights", trained_on_gpu / "best",
                                 "--target", "50%", "--importance", "taylor", "--data", digits, "--calib-batches", "4", "--batch-size", "32",
                                 *SIZE, "--device", device, "--out", tmp_path / device, "--json")
        assert code == 0, err
        summaries[device] = json.loads(out)
    assert summaries["cuda"]["macs"] == summaries["cpu"]["macs"]
    cpu, gpu = _keeps(tmp_path / "cpu"), _keeps(tmp_path / "cuda")
    assert cpu.keys() == gpu.keys()
    # the same scores up to float rounding: at most a unit at the border changes places
    same = sum(len(cpu[g] & gpu[g]) for g in cpu) / sum(len(cpu[g]) for g in cpu)
    assert same > 0.98, same
    # weights written from a GPU run load and run on the CPU
    assert evaluate(capsys, tmp_path / "cuda", digits)["top1"] == pytest.approx(evaluate(capsys, tmp_path / "cpu", digits)["top1"], abs=5)


def test_distillation_with_amp_on_the_gpu_brings_a_pruned_model_back(capsys, tmp_path, digits, trained_on_gpu):
    base = evaluate(capsys, trained_on_gpu / "best", digits)
    assert run_cli(capsys, "prune", "--model", "test_resnet", "--num-classes", "10", "--weights", trained_on_gpu / "best",
                   "--target", "50%", *SIZE, "--out", tmp_path / "pruned")[0] == 0
    pruned = evaluate(capsys, tmp_path / "pruned", digits)
    code, _, err = run_cli(capsys, "finetune", tmp_path / "pruned", "--data", digits, *SIZE, "--epochs", "6", "--batch-size", "64",
                           "--lr", "0.002", "--teacher", "original", "--distillation", "soft", "--mixup", "0.2", "--ema-decay", "0.9",
                           "--device", "cuda", "--amp", "--out", tmp_path / "ft")
    assert code == 0, err
    recovered = evaluate(capsys, tmp_path / "ft" / "best", digits)
    assert pruned["top1"] < base["top1"] - 20, (pruned, base)
    assert recovered["top1"] >= base["top1"] - 6, (recovered, base)


def test_ssl_with_token_reduction_trains_on_the_gpu(capsys, tmp_path, digits, tiny_vit):
    code, out, err = run_cli(capsys, "ssl", tiny_vit, "--data", digits, "--epochs", "2", "--batch-size", "128", "--out-dim", "256",
                             "--hidden-dim", "128", "--bottleneck-dim", "32", "--warmup-epochs", "1", "--lr", "0.002",
                             "--local-crops-number", "2", "--tokens", "simprune", "--keep-rate", "0.7", "--device", "cuda", "--amp",
                             "--out", tmp_path / "ssl", "--json")
    assert code == 0, err
    last = json.loads(out)["last"]
    assert last["epoch"] == 2 and torch.isfinite(torch.tensor(last["train_loss"])) and 0 <= last["knn_top1"] <= 100
    backbone = isoprune.load(tmp_path / "ssl" / "backbone")  # on the CPU
    assert torch.isfinite(backbone(torch.randn(2, 3, 32, 32))).all()
