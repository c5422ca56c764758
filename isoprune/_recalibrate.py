"""BatchNorm statistics re-estimated on the pruned model ("adaptive BatchNorm", Li et al., EagleEye,
ECCV 2020).

A BatchNorm layer normalises with the running mean and variance of its inputs, measured while the
unpruned model trained. Pruning removes input channels from the layers before it, so its inputs
shift and the old statistics no longer fit: a ResNet trained on the digits to 99.9% falls to
10-29% right after pruning to 70% of its MACs, and is back at 89-96% once its statistics are
measured again on 512 training images (``benchmarks/accuracy_digits.py``). No weight changes.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm import tqdm

from ._errors import IsopruneError, on_command_line
from ._memory import named_batch

log = logging.getLogger(__name__)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that keep running statistics (timm's ``BatchNormAct2d`` too)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def recalibrate_bn(model: nn.Module, batches, device: torch.device | str | None = None) -> int:
    """Measure every BatchNorm layer's running mean and variance afresh over ``batches`` (images,
    or (images, labels) pairs), as the mean over batches of each batch's statistics, and return
    how many layers were measured (0, with nothing run, for a model without BatchNorm).

    Only the BatchNorm layers run in training mode; dropout, stochastic depth and everything else
    stay in eval mode, so that the statistics are those of the network inference runs. Each
    module's mode and each layer's momentum are restored afterwards, and a failed pass or no batch
    at all (an error) leaves the statistics as they were. ``torch.optim.swa_utils.update_bn`` does
    neither: it puts the whole model in training mode and resets the statistics first. One process
    measures: under torchrun, call it on one rank with all the batches."""
    norms = batch_norms(model)
    if not norms:
        log.warning("%s has no BatchNorm layer: nothing to recalibrate", type(model).__name__)
        return 0
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative mean over batches, as torch documents for momentum=None
        m.train()
    seen = 0
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="BatchNorm statistics", leave=False):
                images = batch[0] if isinstance(batch, (list, tuple)) else batch
                with named_batch("BatchNorm statistics", seen + 1, "give batches of images shaped like the model's input (or (images, labels) pairs)",
                                 images=images):
                    model(images.to(device) if device is not None else images)
                seen += 1
        if not seen:
            raise IsopruneError("no batches to measure BatchNorm statistics on",
                                hint="give at least one batch of images" + (" (--data DIR with images)" if on_command_line() else ""))
    except BaseException:  # a failed pass or no batch leaves the statistics as they were
        for m, (mean, var, count) in zip(norms, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
        raise
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
    log.info("recalibrated %d BatchNorm layers on %d batches", len(norms), seen)
    return len(norms)
