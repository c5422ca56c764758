"""BatchNorm statistics measured again on the pruned model (``isoprune.recalibrate_bn``)."""
import copy
import logging

import pytest
import timm
import torch
from torch import nn

import isoprune


def _pruned_resnet(digits_batches):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    isoprune.prune(model, 0.5, example_inputs=digits_batches[0][0][:1])
    return model.eval()


def test_one_batch_gives_that_batch_statistics(digits_batches):
    """Measured on one batch, inference normalises that batch as training mode does (up to the
    unbiased variance's n / (n - 1), n = 32 images x 16 x 16 positions at the first layers)."""
    model = _pruned_resnet(digits_batches)
    x = digits_batches[0][0]
    before = model(x)
    assert isoprune.recalibrate_bn(model, [x]) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not model.training
    with torch.no_grad():
        inference = model(x)
        batch_stats = copy.deepcopy(model).train()(x)
    assert torch.allclose(inference, batch_stats, rtol=1e-2, atol=2e-2)
    assert not torch.allclose(before, batch_stats, rtol=1e-2, atol=2e-2)  # the unpruned model's statistics did not fit


def test_statistics_are_means_over_batches(digits_batches):
    """The first BatchNorm's inputs do not depend on another one: its running mean and variance
    are the mean over batches of each batch's mean and unbiased variance of its inputs."""
    model = _pruned_resnet(digits_batches)
    norm = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    outs = []
    hook = norm.register_forward_pre_hook(lambda _, args: outs.append(args[0]))
    with torch.no_grad():
        for x, _ in digits_batches:
            model(x)
    hook.remove()
    isoprune.recalibrate_bn(model, digits_batches)  # (images, labels) pairs
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    assert torch.allclose(norm.running_mean, mean, atol=1e-5) and torch.allclose(norm.running_var, var, rtol=1e-4)
    assert int(norm.num_batches_tracked) == len(digits_batches)


def test_only_batch_norms_train_and_everything_is_restored(digits_batches):
    """Dropout stays off (two runs measure the same statistics); each module's mode and each
    layer's momentum come back as they were."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Dropout(0.5), nn.BatchNorm2d(8, momentum=0.3), nn.ReLU(), nn.BatchNorm2d(8))
    model.train()
    model[1].eval()
    x = digits_batches[0][0]
    isoprune.recalibrate_bn(model, [x])
    first = model[2].running_mean.clone()
    isoprune.recalibrate_bn(model, [x])
    assert torch.equal(model[2].running_mean, first)
    assert torch.allclose(first, model[0](x).detach().mean((0, 2, 3)), atol=1e-6)
    assert [m.training for m in model] == [True, False, True, True, True] and model.training
    assert model[2].momentum == 0.3 and model[4].momentum == 0.1


@pytest.mark.parametrize("batches, message", [
    ([], "no batches to measure BatchNorm statistics on"),
    ([torch.randn(2, 3, 32, 32), torch.randn(2, 5, 32, 32)], r"BatchNorm statistics batch 2 \(images \[2, 5, 32, 32\]\) failed: RuntimeError: .*; "
                                                            r"give batches of images shaped like the model's input"),
], ids=["no batch", "a failing pass"])
def test_statistics_are_kept_when_nothing_is_measured(digits_batches, batches, message):
    model = _pruned_resnet(digits_batches)
    isoprune.recalibrate_bn(model, digits_batches[:1])  # statistics of its own, not a new layer's 0 and 1
    saved = copy.deepcopy(model.state_dict())
    with pytest.raises(isoprune.IsopruneError, match=message):
        isoprune.recalibrate_bn(model, batches)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_a_model_without_batch_norm_is_left_alone(caplog):
    model = timm.create_model("test_vit").eval()
    saved = copy.deepcopy(model.state_dict())
    with caplog.at_level(logging.WARNING):
        assert isoprune.recalibrate_bn(model, [torch.randn(1, 3, 160, 160)]) == 0
    assert "no BatchNorm" in caplog.text
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
