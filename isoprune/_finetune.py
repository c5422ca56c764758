"""Fine-tuning a pruned model with timm's own pieces, in one process or under torchrun.

timm supplies the transforms, Mixup/CutMix, losses, optimiser and scheduler factories and EMA;
this module is the loop around them: distillation from a teacher, AMP on CUDA, DDP, checkpoints
that a crash cannot leave half-written, and an exact ``resume``.

Output directory:
- ``checkpoint.safetensors``: everything to resume (model, EMA, optimiser, scaler, epoch, history),
  one file written to a temporary name and renamed into place;
- ``last/`` and ``best/``: the evaluated weights (EMA's when EMA is on) as isoprune model
  directories, loadable with ``isoprune.load`` and ``isoprune eval``;
- ``metrics.csv``, ``metrics.json`` and ``curves.png``: loss and top-1 per epoch.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import _data, _dist, _io, _memory, _models, _recipes
from ._errors import IsopruneError, UnreachableError, setting
from ._pipeline import meta_example
from ._trace import fixed_size

log = logging.getLogger("isoprune")

CHECKPOINT = "checkpoint.safetensors"
DISTILLATIONS = ("none", "soft", "hard")


@dataclass
class Options(_recipes.Limited):
    """How to run, as opposed to what to train with (``FinetuneConfig``)."""

    data: str
    out: str
    device: str = "cpu"
    input_size: int | None = None
    num_classes: int | None = None
    weights: str = "pretrained"  # for a model given by name
    workers: int = 0
    seed: int = 0
    resume: bool = False
    stop_after: int | None = None
    force: bool = False

    LIMITS = {"input_size": _recipes.COUNT, "num_classes": _recipes.COUNT, "workers": _recipes.NONNEGATIVE, "stop_after": _recipes.COUNT}


def student(source: str, opts: Options, build: dict) -> tuple[nn.Module, dict]:
    """The model to train and the metadata it came with: a directory from ``isoprune prune``
    (or a previous fine-tune), or a model name (trained whole: its plan removes nothing).
    ``build`` are timm keyword arguments for training only (drop path), left out of the metadata."""
    build = {k: v for k, v in build.items() if v}
    path = Path(source)
    if path.is_dir():
        metadata = _io.read_metadata(path)
        if build and metadata["base"]["library"] != "timm":
            raise IsopruneError(f"{', '.join(build)} need a timm model", hint="set drop_path and drop to 0")
        model = _io.load(path, build_kwargs=build)
    else:
        from ._plan import plan

        kwargs = {"num_classes": opts.num_classes} if opts.num_classes else {}
        model = _models.create(source, opts.weights, input_size=opts.input_size, **kwargs, **build)
        model.isoprune_base["kwargs"] = {k: v for k, v in model.isoprune_base["kwargs"].items() if k not in build}
        model.isoprune_plan = plan(model, 0.0, example_inputs=meta_example(model, opts.input_size))
        metadata = {"base": model.isoprune_base, "config": {"weights": opts.weights}, "params": model.isoprune_plan.params}
    if opts.num_classes and getattr(model, "num_classes", None) != opts.num_classes:
        _data.reset_head(model, opts.num_classes)
    return model, metadata


def teacher(spec: str, metadata: dict, num_classes: int, side: int | None = None) -> nn.Module | None:
    """``original``: the unpruned base, with the weights it was pruned from (its prune config's
    ``weights``), or, pruned from a saved model, the closest trained one it came from (``_original``;
    none where that one was pre-trained by ``ssl``: its classifier never learnt);
    a directory: a saved isoprune model; a file: the base with those weights; else a
    timm model name with pretrained weights; ``none``: no teacher. It sees the student's images,
    ``side`` squared: a teacher that takes one size is built for it, or refused if saved for another."""
    if spec in (None, "none") or (spec == "original" and _io.unpruned(metadata)):
        return None  # a model trained whole (by name, or by ssl, then saved: its plan removes nothing) has no original to learn from
    if spec == "original":
        spec, metadata = _original(metadata)
        if _self_supervised(metadata):
            if _dist.is_main():
                log.warning("no teacher: %s, the closest trained model this one came from, was pre-trained without labels "
                            "(isoprune ssl); pass %s or NAME to distil from a classifier", spec, setting("teacher", "PATH"))
            return None
    model = _teacher_model(spec, metadata, side)
    fixed = fixed_size(model)
    if side is not None and fixed not in (None, (side, side)):
        raise IsopruneError(f"the teacher takes {fixed[0]}x{fixed[1]} inputs only, but the student trains at {side}x{side}",
                            hint=f"give a teacher built for the student's input size, or {setting('teacher', 'none')}")
    classes = getattr(model, "num_classes", None)
    if classes is not None and classes != num_classes:
        raise IsopruneError(
            f"the teacher predicts {classes} classes but the student {num_classes}",
            hint=f"give a teacher trained on the same classes, or {setting('teacher', 'none')}",
        )
    return model.eval().requires_grad_(False)


def _teacher_model(spec: str, metadata: dict, side: int | None) -> nn.Module:
    """The model ``spec`` names (``original``, resolved by ``_original``: the base; a checkpoint
    file; a saved directory; a timm name), built at ``side``."""
    path = Path(spec)
    if spec == "original":
        return _base_teacher((metadata.get("config") or {}).get("weights", "pretrained"), metadata, side)
    if path.is_file() and _io.is_saved(path.parent):  # a pruned model's weights fit no model built by name
        raise IsopruneError(f"{path} is the weights file of a model isoprune saved", hint=f"pass its directory as {setting('teacher', path.parent)}")
    if path.suffix and path.is_file():
        return _base_teacher(str(path), metadata, side, checkpoint=True)
    if path.is_dir():
        if _io.is_saved(path) and _self_supervised(_io.read_metadata(path)):
            raise IsopruneError(f"teacher {path} was pre-trained without labels (isoprune ssl): its classifier never learnt, so it cannot teach",
                                hint=f"fine-tune it first (isoprune finetune {path} --num-classes N), or pass another {setting('teacher')}, or none")
        return _io.load(path)
    if path.suffix and not _models.is_name(spec):  # regnety_160.deit_in1k, the DeiT recipes' teacher, is a name with a tag
        raise IsopruneError(f"no teacher checkpoint at {path}", hint="give an existing file, a directory isoprune wrote, a timm model name, or none")
    try:
        return _models.create(spec, "pretrained", input_size=side)
    except UnreachableError as exc:  # a Hub config's hint says how to get it; the weights' is for --weights, not the teacher
        hint = exc.hint if exc.what == "config" else (f"offline? pass {setting('teacher', 'PATH')} (a checkpoint of it, or a directory isoprune saved), "
                                                      f"or {setting('teacher', 'none')}")
        raise IsopruneError(f"teacher {spec}: {exc.message}", hint=hint) from exc


def _base_teacher(weights: str, metadata: dict, side: int | None, checkpoint: bool = False) -> nn.Module:
    """The base model of ``metadata`` with ``weights``: those it was pruned from, or a
    ``checkpoint`` given as the teacher. It is built for the student's classes, so a head the
    weights lack would be new, and teach nothing: that is refused."""
    if weights == "none":
        raise IsopruneError(
            "the original model was pruned from random weights, so it cannot teach",
            hint=f"pass {setting('teacher', 'PATH')} (its trained weights), a timm model name, or none",
        )
    base, flag = metadata["base"], setting("teacher", weights if checkpoint else "original")
    if base["library"] != "timm":
        raise IsopruneError(f"{flag} needs a timm base model", hint=_other_teacher())
    built_from = base.get("source", base["name"])  # a model from the Hub or a folder: its weights are there
    if "source" in base:
        try:
            _models.source_config(built_from)
        except IsopruneError as exc:  # a folder moved or deleted since, a repo not in the cache offline
            raise IsopruneError(f"{flag}: {exc.message}", hint=_other_teacher()) from exc
    given, trained = base["kwargs"].get("num_classes"), _models.head_classes(built_from, weights)
    if given is not None and trained not in (None, given):
        raise IsopruneError(
            (f"the student has {given} classes" if checkpoint else f"the original model was given a new {given}-class head when pruned")
            + f", but the teacher's weights ({weights}) predict {trained} classes",
            hint=f"pass {setting('teacher', 'PATH')} or NAME (a model trained on the student's classes), or none",
        )
    return _models.create(built_from, weights, input_size=side, **base["kwargs"])


def _other_teacher() -> str:
    return f"pass {setting('teacher', 'PATH')} or NAME, or none"


def _self_supervised(metadata: dict) -> bool:
    """Whether a saved model was last trained by ``ssl``: DINO never trains its classifier, whose
    logits would teach noise."""
    return "ssl" in metadata and "finetune" not in metadata


def _original(metadata: dict) -> tuple[str, dict]:
    """What ``--teacher original`` names for a model with this metadata: the saved model it was
    pruned from, where that was trained (fine-tuned, pre-trained, or never pruned); past one
    pruned and never trained since, the model that one came from, and so on up to the base
    (``"original"``, with the metadata whose ``base`` and ``weights`` build it)."""
    while True:
        source = _io.pruned_from(metadata)
        if source is None:  # pruned from a timm name: the base, with the weights it was pruned from
            return "original", metadata
        if not _io.is_saved(source):
            raise IsopruneError(f"the model this one was pruned from, {source}, is gone", hint=_other_teacher())
        metadata = _io.read_metadata(source)
        if any(k in metadata for k in ("finetune", "ssl")) or _io.unpruned(metadata):
            return source, metadata


def _seed(seed: int, epoch: int, rank: int) -> None:
    """Every epoch starts from RNG states fixed by (seed, epoch, rank): augmentation, dropout and
    mixup draw the same numbers whether or not the run was interrupted before this epoch."""
    value = (seed * 1009 + epoch) * 131 + rank
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def _loaders(opts: Options, cfg, model, env: _dist.Env):
    import timm.data

    config = _data.data_config(model, opts.input_size)
    if cfg.augment:
        try:
            train_tf = timm.data.create_transform(
                config["input_size"], is_training=True, auto_augment=cfg.randaugment, re_prob=cfg.reprob,
                interpolation=cfg.interpolation, mean=config["mean"], std=config["std"],
            )
        except (AssertionError, KeyError, ValueError) as exc:  # timm asserts on an unknown policy, looks up the interpolation
            raise IsopruneError(f"timm cannot build the training transforms (randaugment {cfg.randaugment!r}, "
                                f"interpolation {cfg.interpolation!r}): {exc}",
                                hint="give a timm policy (rand-m9-mstd0.5-inc1, augmix-m5-w4-d2 ...) and bicubic, bilinear or nearest") from exc
    else:
        train_tf = timm.data.create_transform(**config, is_training=False)
    val_tf = timm.data.create_transform(**config, is_training=False)
    train_dir, val_dir = _data.splits(opts.data, "train", "val")
    train = _data.image_folder(train_dir, train_tf)
    val = _data.image_folder(val_dir, val_tf, classes=train.classes)  # labelled as train/ labels them
    _data.check_classes(train, model, str(train_dir))
    if cfg.batch_size % env.world:
        raise IsopruneError(f"batch size {cfg.batch_size} does not split over {env.world} processes", hint="give a multiple of the process count")
    if (cfg.batch_size // env.world) % cfg.grad_accum_steps:
        raise IsopruneError(f"a batch of {cfg.batch_size // env.world} per process does not split into {cfg.grad_accum_steps} equal steps",
                            hint=f"give a {setting('grad_accum_steps')} that divides it")
    if len(train) < cfg.batch_size:
        raise IsopruneError(f"{opts.data}/train has {len(train)} images, fewer than one batch of {cfg.batch_size}", hint=f"lower {setting('batch_size')}")

    def train_loader(e):
        return _data.seeded_loader(train, cfg.batch_size, shuffle=True, seed=opts.seed, epoch=e, rank=env.rank,
                                   world=env.world, workers=opts.workers, drop_last=True)

    val_loader = _data.seeded_loader(val, cfg.batch_size, shuffle=False, seed=opts.seed, rank=env.rank, world=env.world, workers=opts.workers)
    return train_loader, val_loader, len(train.classes), config["input_size"]


class _Loss:
    """Label loss (soft targets under mixup, label smoothing, or plain cross-entropy), plus
    distillation from the teacher's logits on the same (mixed) images."""

    def __init__(self, cfg, mixup_on: bool, teacher_model: nn.Module | None):
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        if cfg.distillation not in DISTILLATIONS:
            raise IsopruneError(f"unknown distillation {cfg.distillation!r}", hint=f"use one of {', '.join(DISTILLATIONS)}")
        self.labels = SoftTargetCrossEntropy() if mixup_on else LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing else nn.CrossEntropyLoss()
        self.teacher = teacher_model if cfg.distillation != "none" else None
        self.kind, self.alpha, self.tau = cfg.distillation, cfg.distill_alpha, cfg.distill_tau

    def __call__(self, outputs, images, targets):
        cls, dist_out = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        loss = self.labels(cls, targets)
        if self.teacher is None:
            return loss
        with torch.no_grad():
            t = self.teacher(images)
        if self.kind == "hard":
            kd = F.cross_entropy(dist_out, t.argmax(1))
        else:
            kd = F.kl_div(F.log_softmax(dist_out / self.tau, 1), F.log_softmax(t / self.tau, 1), reduction="batchmean", log_target=True) * self.tau**2
        return (1 - self.alpha) * loss + self.alpha * kd


def _autocast(device: torch.device, amp: bool):
    if device.type != "cuda" or not amp:
        return nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


def evaluate(model: nn.Module, loader, device: torch.device, env: _dist.Env | None = None, amp: bool = False, desc: str = "eval",
             dtype: torch.dtype | None = None, memory_format: torch.memory_format = torch.preserve_format) -> dict:
    """Top-1, top-5 (percent) and mean cross-entropy over the loader, summed over all processes;
    the images in ``dtype`` and ``memory_format`` where given (those of a model cast to them)."""
    env = env or _dist.Env()
    model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, top-1, top-5, images
    cast, _ = _autocast(device, amp)
    with torch.no_grad():
        for images, targets in tqdm(_data.readable(loader), desc=desc, total=len(loader), leave=False, disable=not env.main):
            images, targets = images.to(device, dtype, memory_format=memory_format), targets.to(device)
            with cast:
                out = model(images)
            out = (out[0] if isinstance(out, tuple) else out).float()
            top = out.topk(min(5, out.shape[1]), 1).indices
            sums[0] += F.cross_entropy(out, targets, reduction="sum").item()
            sums[1] += (top[:, 0] == targets).sum().item()
            sums[2] += (top == targets[:, None]).any(1).sum().item()
            sums[3] += len(targets)
    loss, top1, top5, n = env.sum(sums, device)
    return {"loss": loss / max(n, 1), "top1": 100 * top1 / max(n, 1), "top5": 100 * top5 / max(n, 1), "images": int(n)}


def finetune(source: str, opts: Options, cfg: _recipes.FinetuneConfig, given: dict | None = None) -> dict:
    """Train ``source`` (a pruned directory or a model name) on ``opts.data``; returns the final
    and best metrics. Under torchrun every process calls this; rank 0 alone writes. A resumed run
    keeps its settings; of ``given`` (those asked for), only ``grad_accum_steps`` may change."""
    import timm.data
    from timm.utils import ModelEmaV3

    out = Path(opts.out)
    if opts.resume:
        state, saved = _read_checkpoint(out)
        cfg, opts = resumed(saved, state["header"]["options"], opts, given or {}, how=("grad_accum_steps",))
    else:
        _io.check_writable(out, opts.force)
        state = None
    env, device = _dist.start(opts.device)
    torch.manual_seed(opts.seed)  # the same random init (a new head, a model trained whole) in every process
    model, metadata = student(source, opts, {"drop_path_rate": cfg.drop_path, "drop_rate": cfg.drop})
    train_loader, val_loader, num_classes, size = _loaders(opts, cfg, model, env)  # size: the images', (channels, height, width)
    teacher_model = teacher(cfg.teacher, metadata, num_classes, size[-1]) if cfg.distillation != "none" else None
    if teacher_model is not None:
        teacher_model.to(device)
        if hasattr(model, "set_distilled_training"):
            model.set_distilled_training(True)  # a distilled DeiT learns from the teacher through its dist token
    model.to(device)
    updates_per_epoch = len(train_loader(0))
    optimizer, scheduler = optimization(model, cfg, updates_per_epoch)
    ema = ModelEmaV3(model, decay=cfg.ema_decay, device=device) if cfg.ema_decay else None
    cast, scaler = _autocast(device, cfg.amp)
    mixup_on = cfg.augment and (cfg.mixup > 0 or cfg.cutmix > 0)
    mixup = timm.data.Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing, num_classes=num_classes) if mixup_on else None
    if mixup_on and (cfg.batch_size // env.world) % 2:
        raise IsopruneError("mixup/cutmix needs an even batch per process", hint=f"give an even {setting('batch_size')} per process")
    criterion = _Loss(cfg, mixup_on, teacher_model)
    start, updates, history, best = 0, 0, [], None
    if state is not None:
        start, updates, history, best = _restore(state, model, ema, optimizer, scaler)
        scheduler.step(start)
    _check_memory(model, cfg, size, device, cast, env)
    trained = nn.parallel.DistributedDataParallel(model) if env.world > 1 else model
    last_epoch = cfg.epochs if opts.stop_after is None else min(cfg.epochs, start + opts.stop_after)
    for epoch in range(start, last_epoch):
        _seed(opts.seed, epoch, env.rank)
        began = time.time()
        trained.train()
        sums = [0.0, 0.0]
        bar = tqdm(_data.readable(train_loader(epoch)), desc=f"epoch {epoch + 1}/{cfg.epochs}", total=updates_per_epoch, disable=not env.main)
        for images, targets in bar:
            images, targets = images.to(device), targets.to(device)
            if mixup is not None:
                images, targets = mixup(images, targets)
            try:
                optimizer.zero_grad(set_to_none=True)
                loss = _accumulate(trained, criterion, images, targets, cfg.grad_accum_steps, cast, scaler, env.world > 1)
                if not torch.isfinite(loss):
                    raise IsopruneError(f"the loss is {loss.item()} at epoch {epoch + 1}", hint=f"lower {setting('lr')}, or set {setting('clip_grad')}")
                _update(optimizer, scaler, model, cfg.clip_grad)
            except torch.cuda.OutOfMemoryError as exc:
                step = len(images) // cfg.grad_accum_steps
                raise IsopruneError(f"out of GPU memory at {step} images per process and step",
                                    hint=f"raise {setting('grad_accum_steps')} (the same batch, in more steps), or lower {setting('batch_size')}") from exc
            except ValueError as exc:
                if "Expected more than 1 value per channel" not in str(exc):
                    raise
                raise IsopruneError(f"BatchNorm cannot train on {len(images) // cfg.grad_accum_steps} image at a time: "
                                    "one of its layers sees a single value per channel",
                                    hint=f"give at least 2 images per process and step ({setting('batch_size')}, {setting('grad_accum_steps')})") from exc
            updates += 1
            scheduler.step_update(num_updates=updates)
            if ema is not None:
                ema.update(model, step=updates)
            sums[0] += loss.item() * len(images)
            sums[1] += len(images)
            bar.set_postfix(loss=f"{sums[0] / sums[1]:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        lr = optimizer.param_groups[0]["lr"]
        train_loss, seen = env.sum(sums, device)
        judged = ema.module if ema is not None else model
        metrics = evaluate(judged, val_loader, device, env, cfg.amp, desc="val")
        scheduler.step(epoch + 1, metrics["top1"])  # a plateau schedule decays on it, as timm's train.py has it; the others ignore it
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss / seen,
               "val_loss": metrics["loss"], "top1": metrics["top1"], "top5": metrics["top5"], "seconds": time.time() - began}
        history.append(row)
        improved = best is None or row["top1"] > best["top1"]
        best = row if improved else best
        if env.main:
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
                       f"top-1 {row['top1']:.2f}%, top-5 {row['top5']:.2f}%" + (" (best)" if improved else ""), file=sys.stderr)
            _write_epoch(out, judged, model, ema, optimizer, scaler, cfg, opts, metadata, history, best, updates, improved, size)
        env.barrier()
    _dist.stop(env)
    return {"epochs": len(history), "last": history[-1] if history else None, "best": best, "out": str(out)}


def _accumulate(trained: nn.Module, criterion, images, targets, steps: int, cast, scaler, ddp: bool) -> torch.Tensor:
    """Forward and backward over a batch in ``steps`` equal pieces, each piece's loss weighted by
    its share, so that the gradients add up to the whole batch's (BatchNorm sees one piece at a
    time, as it sees one process's share under DDP); DDP synchronises the last piece's only.
    Returns the batch's loss, detached (not finite where any piece's was)."""
    total = None
    pieces = list(zip(images.chunk(steps), targets.chunk(steps)))
    for i, (x, y) in enumerate(pieces):
        with trained.no_sync() if ddp and i < len(pieces) - 1 else nullcontext():
            with cast:
                loss = criterion(trained(x), x, y) * (len(x) / len(images))
            _backward(loss, scaler)
        total = loss.detach() if total is None else total + loss.detach()
    return total


def _check_memory(model: nn.Module, cfg, size, device: torch.device, cast, env: _dist.Env) -> None:
    """Refuse a batch that cannot fit before the first step (``_memory.check_batch``)."""

    def forward(n: int):
        with cast:
            return model(torch.randn(n, *size, device=device))

    model.train()
    states = 1 if any(k in cfg.opt for k in ("sgd", "momentum", "lion")) else 2  # AdamW keeps two tensors per parameter
    _memory.check_batch(model, forward, cfg.batch_size, device, copies=_memory.training_copies(states, env.world), processes=env.world,
                        local_processes=_memory.local_processes(), image=f"{size[-2]}x{size[-1]} image", steps=cfg.grad_accum_steps)


def config(source_metadata: dict | None, recipe: str | None = None, **overrides) -> _recipes.FinetuneConfig:
    """The ``finetune`` section of ``recipe``, else of the recipe the model was pruned with (its
    metadata records it), else the defaults; then ``overrides``."""
    recipe = recipe or ((source_metadata or {}).get("config") or {}).get("recipe")
    cfg = _recipes.load_recipe(recipe).finetune if recipe else _recipes.FinetuneConfig()
    return replace(cfg, **overrides)


def run(source: str | Path, data: str | Path, out: str | Path | None = None, *, recipe: str | None = None, **settings) -> dict:
    """Fine-tune ``source`` (a directory ``isoprune prune`` wrote, or a timm model name, trained
    whole) on the ImageFolder ``data`` (``train/`` and ``val/``), as ``isoprune finetune`` does.

    ``settings`` are ``FinetuneConfig`` fields (``epochs=30, lr=1e-4, teacher="none"``), which
    override the recipe's, and run options (``device``, ``num_classes``, ``input_size``,
    ``weights``, ``workers``, ``seed``, ``resume``, ``stop_after``, ``force``). ``out`` defaults to
    ``finetuned/NAME``. Returns the epochs run, the last and best epoch's metrics and ``out``."""
    trained = {f.name for f in fields(_recipes.FinetuneConfig)}
    running = {f.name for f in fields(Options)} - {"data", "out"}
    unknown = sorted(set(settings) - trained - running)
    if unknown:
        raise IsopruneError(f"unknown fine-tuning setting {unknown[0]!r}", hint=f"valid: {', '.join(sorted(trained | running))}")
    source = str(source)
    is_dir = Path(source).is_dir()
    _io.refuse_weights(source, settings.get("weights"))
    cfg = config(_io.read_metadata(source) if is_dir else None, recipe, **{k: v for k, v in settings.items() if k in trained})
    name = Path(source).resolve().name if is_dir else _models.architecture(source)
    opts = Options(data=str(data), out=str(out or f"finetuned/{name}"),
                   **{k: v for k, v in settings.items() if k in running and v is not None})
    return finetune(source, opts, cfg, settings)


KEPT = ("input_size", "num_classes", "weights", "seed")  # the run options a resumed run keeps


def resumed(saved, options: dict, opts: Options, given: dict, how=()) -> tuple:
    """The config and run options a resumed run goes on with: the checkpoint's (``saved``, and the
    ``options`` it records), where ``how`` settings given anew (how it runs, not what it learns)
    replace theirs. Any other setting given that differs from the run's is refused, in one line:
    left alone, it would be silently ignored."""
    for name, value in given.items():
        if value is None:
            continue
        was = getattr(saved, name) if hasattr(saved, name) else options.get(name, value) if name in KEPT else value
        if name not in how and value != was and not (isinstance(was, list) and list(value) == was):
            raise IsopruneError(f"{setting(name, value)} differs from the resumed run's "
                                f"{'(the default)' if was is None else was}: a resumed run keeps its settings",
                                hint=f"resume without it, or start a new run in another {setting('out')}"
                                     + (f" (only {', '.join(how)} may change)" if how else ""))
    cfg = replace(saved, **{k: v for k, v in given.items() if k in how and v is not None})
    return cfg, replace(opts, **{k: options[k] for k in KEPT})


def optimization(model: nn.Module, cfg, updates_per_epoch: int):
    """timm's optimiser (weight decay off for biases and norms, optional layer decay) and scheduler
    (stepped per epoch, with warmup) for the config."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    betas = {"betas": tuple(cfg.betas)} if "adam" in cfg.opt or "lamb" in cfg.opt else {}
    try:
        optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                        layer_decay=cfg.layer_decay, **betas)
        scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
                                           decay_milestones=cfg.decay_milestones or (30, 60, 90), decay_rate=cfg.decay_rate,
                                           updates_per_epoch=updates_per_epoch)
    except (ValueError, AssertionError, KeyError) as exc:
        raise IsopruneError(f"timm cannot build optimiser {cfg.opt!r} with schedule {cfg.sched!r}: {exc}",
                            hint="use a timm optimiser (adamw, sgd, lamb ...) and schedule (cosine, step, multistep ...)") from exc
    return optimizer, scheduler


def _step(loss, optimizer, scaler, model, clip_grad, frozen=(), per_parameter: bool = False) -> None:
    """Backward, then ``_update``."""
    _backward(loss, scaler)
    _update(optimizer, scaler, model, clip_grad, frozen, per_parameter)


def _backward(loss, scaler) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _update(optimizer, scaler, model, clip_grad, frozen=(), per_parameter: bool = False) -> None:
    """Clip the gradients backward left (unscaled: the global norm, or each parameter's own as
    DINO does), drop those of ``frozen`` parameters, step."""
    if clip_grad:
        if scaler is not None:
            scaler.unscale_(optimizer)
        for group in ([p] for p in model.parameters() if p.grad is not None) if per_parameter else [model.parameters()]:
            nn.utils.clip_grad_norm_(group, clip_grad)
    for p in frozen:
        p.grad = None
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


# -- checkpoints ---------------------------------------------------------------------------------

def _tensors(prefix: str, state: dict) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _write_epoch(out: Path, judged, model, ema, optimizer, scaler, cfg, opts, metadata, history, best, updates, improved, size) -> None:
    extra = {"config": metadata.get("config"), "finetune": asdict(cfg), "epoch": history[-1]["epoch"], "metrics": history[-1]}
    saving = {"plan": model.isoprune_plan, "base": model.isoprune_base, "overwrite": True, "extra": extra,
              "input_size": size}  # the size it was trained at
    _io.save(judged, out / "last", **saving)
    if improved:
        _io.save(judged, out / "best", **saving)
    tensors = _tensors("model.", model.state_dict())
    if ema is not None:
        tensors.update(_tensors("ema.", ema.module.state_dict()))
    opt_tensors, opt_header = optimizer_state(optimizer)
    header = {
        "epoch": history[-1]["epoch"], "updates": updates, "history": history, "best": best,
        "finetune": asdict(cfg), "options": asdict(opts), "scaler": scaler.state_dict() if scaler is not None else None, **opt_header,
    }
    write_checkpoint(out, {**tensors, **opt_tensors}, header)
    _write_metrics(out, history)


def write_checkpoint(out: Path, tensors: dict[str, torch.Tensor], header: dict) -> None:
    """One safetensors file with the header as metadata; the old checkpoint stays whole until the rename."""
    blob = safetensors.torch.save(tensors, metadata={"isoprune": json.dumps(header)})
    temporary = out / f".{CHECKPOINT}.tmp"
    temporary.write_bytes(blob)
    os.replace(temporary, out / CHECKPOINT)


def optimizer_state(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimiser's state as tensors (``optimizer.INDEX.KEY``) and a JSON-able header part.
    Tensors held elsewhere (LAMB's step in its parameter groups, Kron's lists of preconditioners)
    are stored as tensors too (``optimizer_nested.N``), and the header names them in their place."""
    opt_state = optimizer.state_dict()
    tensors, scalars, nested = {}, {}, []
    for index, per_param in opt_state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars[f"{index}.{key}"] = _tensors_out(value, nested)
    groups = _tensors_out(opt_state["param_groups"], nested)
    tensors.update({f"optimizer_nested.{i}": t for i, t in enumerate(nested)})
    return tensors, {"param_groups": groups, "optimizer_scalars": scalars}


_NESTED = "isoprune_tensor"  # {_NESTED: key}: a header's place for the tensor stored under key


def _tensors_out(value, nested: list[torch.Tensor]):
    """``value`` with every tensor inside it appended to ``nested`` and named in its place."""
    if isinstance(value, torch.Tensor):
        nested.append(value.detach().cpu().contiguous().clone())
        return {_NESTED: f"optimizer_nested.{len(nested) - 1}"}
    if isinstance(value, (list, tuple)):
        return [_tensors_out(v, nested) for v in value]
    if isinstance(value, dict):
        return {k: _tensors_out(v, nested) for k, v in value.items()}
    return value


def _tensors_in(value, tensors: dict[str, torch.Tensor]):
    """``_tensors_out`` undone."""
    if isinstance(value, dict):
        return tensors[value[_NESTED]] if set(value) == {_NESTED} else {k: _tensors_in(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_tensors_in(v, tensors) for v in value]
    return value


def load_optimizer_state(optimizer, tensors: dict[str, torch.Tensor], header: dict) -> None:
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            index, name = key[10:].split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
    for key, value in header["optimizer_scalars"].items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = _tensors_in(value, tensors)
    optimizer.load_state_dict({"state": per_param, "param_groups": _tensors_in(header["param_groups"], tensors)})


def _read_checkpoint(out: Path) -> tuple[dict, _recipes.FinetuneConfig]:
    """The saved state and the config it was trained with (a resumed run keeps it)."""
    state = read_checkpoint_file(out)
    if "finetune" not in state["header"]:
        raise IsopruneError(f"{out / CHECKPOINT} is a self-supervised checkpoint, not a fine-tuning one", hint="resume it with isoprune ssl")
    return state, _recipes.build(_recipes.FinetuneConfig, state["header"]["finetune"], "finetune")


def read_checkpoint_file(out: Path) -> dict:
    """The header and tensors of ``out``'s checkpoint, or one error saying why there are none."""
    path = out / CHECKPOINT
    if not path.is_file():
        raise IsopruneError(f"nothing to resume: no {CHECKPOINT} in {out}",
                            hint=f"start without {setting('resume')}, or give the {setting('out')} of an earlier run")
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            header = json.loads(f.metadata()["isoprune"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise IsopruneError(f"cannot read {path}: {exc}", hint=f"the checkpoint is damaged; start again with {setting('force', True)}") from exc
    return {"header": header, "tensors": tensors}


def _restore(state: dict, model, ema, optimizer, scaler) -> tuple[int, int, list, dict]:
    header, tensors = state["header"], state["tensors"]
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.module.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    load_optimizer_state(optimizer, tensors, header)
    if scaler is not None and header["scaler"]:
        scaler.load_state_dict(header["scaler"])
    return header["epoch"], header["updates"], header["history"], header["best"]


def _write_metrics(out: Path, history: list[dict]) -> None:
    from ._report import draw_curves

    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    (out / "metrics.json").write_text(json.dumps(history, indent=1))
    draw_curves(history, out / "curves.png")
