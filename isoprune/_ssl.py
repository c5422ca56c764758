"""Self-supervised pre-training of a ViT with DINO, with token reduction in both branches.

The model (a timm name, or a directory ``isoprune prune`` wrote) is the student backbone; the
teacher is its copy, updated as an exponential moving average. Each step:
teacher(global views) -> student(global views, reduced; local crops, never reduced) -> DINO loss
(sharpened, centred teacher against the student's other views) -> AdamW step -> teacher EMA.

Output directory:
- ``checkpoint.safetensors``: everything to resume (student, teacher, heads, optimiser, centre,
  scaler, epoch, history), written to a temporary name and renamed into place;
- ``backbone/``: the teacher's backbone as an isoprune model directory, for ``isoprune finetune``
  (``--num-classes N`` gives it a head), ``isoprune eval``, or ``--weights`` of ``isoprune prune``;
- ``config.yaml``: the resolved settings; ``metrics.csv``, ``metrics.json`` and ``curves.png``.
"""
from __future__ import annotations

import copy
import json
import logging
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm.auto import tqdm

from . import _data, _dist, _finetune, _io, _memory, _models, _recipes, tokens
from ._errors import IsopruneError, setting
from ._finetune import CHECKPOINT, Options

log = logging.getLogger("isoprune")

METHODS = ("dino",)


class DINOHead(nn.Module):
    """MLP to a bottleneck, l2-normalised, then a weight-normalised linear layer to ``out_dim``
    (its norm frozen at 1 when ``norm_last_layer``)."""

    def __init__(self, dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, norm_last_layer: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad = not norm_last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class Branch(nn.Module):
    """Backbone + head over multi-crop input: the global views (``[A; B]``, reduced) in one pass,
    the local crops (never reduced) in another, then the head on all the class features."""

    def __init__(self, backbone: nn.Module, head: DINOHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, views: torch.Tensor, local: torch.Tensor | None = None) -> torch.Tensor:
        out = class_features(self.backbone, views)
        if local is not None:
            with tokens.paused(self.backbone):
                out = torch.cat([out, class_features(self.backbone, local)])
        return self.head(out)


def class_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The ViT's pooled features before its classifier (the class token, normed)."""
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student, over every pair of
    (teacher global view, other student view); the centre follows the teacher's batch mean,
    all-reduced over processes."""

    def __init__(self, out_dim: int, cfg: _recipes.SSLConfig, steps_per_epoch: int):
        super().__init__()
        self.student_temp, self.center_momentum = cfg.student_temp, cfg.center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        warm = min(cfg.warmup_teacher_temp_epochs, cfg.epochs) * steps_per_epoch
        self.teacher_temp = np.concatenate([np.linspace(cfg.warmup_teacher_temp, cfg.teacher_temp, warm),
                                            np.full(cfg.epochs * steps_per_epoch - warm, cfg.teacher_temp)])

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, step: int, globals_: int = 2) -> torch.Tensor:
        temp = float(self.teacher_temp[min(step, len(self.teacher_temp) - 1)])
        targets = F.softmax((teacher - self.center) / temp, dim=-1).detach().chunk(globals_)
        logs = F.log_softmax(student / self.student_temp, dim=-1).chunk(len(student) // (len(teacher) // globals_))
        total, pairs = 0.0, 0
        for t, target in enumerate(targets):
            for s, log in enumerate(logs):
                if s != t:
                    total = total + torch.sum(-target * log, dim=-1).mean()
                    pairs += 1
        self.update_center(teacher)
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        batch = teacher.sum(dim=0, keepdim=True)
        count = _dist.all_sum_([batch], len(teacher), teacher.device)
        self.center.mul_(self.center_momentum).add_(batch / count, alpha=1 - self.center_momentum)


def cosine(base: float, final: float, steps: int, warmup_steps: int = 0) -> np.ndarray:
    """Per-step values: linear from 0 to ``base`` over the warm-up, then cosine to ``final``."""
    warmup_steps = min(warmup_steps, steps)
    rest = np.arange(steps - warmup_steps)
    decay = final + 0.5 * (base - final) * (1 + np.cos(np.pi * rest / max(len(rest), 1)))
    return np.concatenate([np.linspace(0.0, base, warmup_steps), decay])


class MultiCrop:
    """DINO's augmentation, from the paper: two global crops (blur always / rarely, solarise the
    second) and ``local`` small crops, each with flips and colour jitter."""

    def __init__(self, cfg: _recipes.SSLConfig, size: int, local_size: int, mean, std):
        from torchvision import transforms as T

        colour = T.Compose([T.RandomHorizontalFlip(), T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)])
        finish = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

        def blur(p):
            return T.RandomApply([T.GaussianBlur(kernel_size=max(3, size // 10 | 1), sigma=(0.1, 2.0))], p=p)

        crop = T.RandomResizedCrop(size, scale=tuple(cfg.global_crops_scale), interpolation=T.InterpolationMode.BICUBIC)
        self.first = T.Compose([crop, colour, blur(1.0), finish])
        self.second = T.Compose([crop, colour, blur(0.1), T.RandomSolarize(128, p=0.2), finish])
        small = T.RandomResizedCrop(local_size, scale=tuple(cfg.local_crops_scale), interpolation=T.InterpolationMode.BICUBIC)
        self.local = T.Compose([small, colour, blur(0.5), finish])
        self.local_number = cfg.local_crops_number

    def __call__(self, image):
        return [self.first(image), self.second(image)] + [self.local(image) for _ in range(self.local_number)]


def _collate(batch):
    """(crops, label) samples -> ([A; B] global views, local crops or None)."""
    crops = list(zip(*[sample[0] for sample in batch]))
    views = torch.cat([torch.stack(crops[0]), torch.stack(crops[1])])
    local = torch.cat([torch.stack(c) for c in crops[2:]]) if len(crops) > 2 else None
    return views, local


def build(source: str, opts: Options, cfg: _recipes.SSLConfig) -> tuple[Branch, Branch, dict]:
    """Student and teacher branches, with token reduction applied to both."""
    if cfg.method not in METHODS:
        raise IsopruneError(f"unknown self-supervised method {cfg.method!r}", hint=f"use one of {', '.join(METHODS)}")
    _check_vit(source)
    backbone, metadata = _finetune.student(source, opts, {"drop_path_rate": cfg.drop_path, "dynamic_img_size": True})
    # it learns to resample its position embeddings for every crop's size; saved so, it is rebuilt so
    base = backbone.isoprune_base
    backbone.isoprune_base = {**base, "kwargs": {**base["kwargs"], "dynamic_img_size": True}}
    for p in backbone.get_classifier().parameters():
        p.requires_grad_(False)  # DINO trains the features; the classifier is left for fine-tuning
    student = Branch(backbone, DINOHead(backbone.num_features, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.norm_last_layer))
    teacher = copy.deepcopy(student)
    for m in teacher.modules():
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0  # the teacher runs without stochastic depth
    teacher.requires_grad_(False)
    config = token_config(cfg)
    t, s = tokens.apply(teacher.backbone, config), tokens.apply(student.backbone, config)
    if cfg.replay:
        s.follow(t)
    if s.gates:  # dynamic SimPrune: the branches own the gates, so they train, average and save with them
        student.token_gates, teacher.token_gates = s.gates, t.gates
        t.gates.load_state_dict(s.gates.state_dict())
        t.gates.requires_grad_(False)
    return student, teacher, metadata


def token_config(cfg: _recipes.SSLConfig) -> tokens.TokenConfig:
    """The token reduction ``cfg`` asks for; call it first, and bad settings fail before any work."""
    if cfg.replay and cfg.dynamic:
        raise IsopruneError("dynamic SimPrune cannot replay the teacher's choice: its gate learns from the student's own",
                            hint=f"drop {setting('replay')} or {setting('dynamic')}")
    return tokens.TokenConfig(cfg.tokens, cfg.keep_rate, blocks=tuple(cfg.token_blocks) if cfg.token_blocks else None,
                              warmup=cfg.token_warmup, dynamic=cfg.dynamic, candidates=cfg.token_candidates, sparsity=cfg.token_sparsity)


def _check_vit(source: str) -> None:
    """One clear error for a model that is not a timm ViT, before building it with ViT-only arguments."""
    base = _io.read_metadata(source)["base"] if Path(source).is_dir() else {"library": "timm", "name": source, "kwargs": {}}
    if base["library"] != "timm":
        raise IsopruneError(f"self-supervised training needs a timm VisionTransformer; {source} is a {base['library']} model")
    with torch.device("meta"):
        tokens._vit(_models.create(base["name"], "none", **base["kwargs"]))


def knn_top1(backbone: nn.Module, train_loader, val_loader, device, k: int = 20, temperature: float = 0.07, num_classes: int | None = None) -> float:
    """Weighted k-NN top-1 (percent) on l2-normalised class features, unreduced, as DINO evaluates."""
    def features(loader):
        feats, labels = [], []
        with torch.no_grad():
            for images, targets in tqdm(_data.readable(loader), desc="k-NN features", total=len(loader), leave=False):
                feats.append(F.normalize(class_features(backbone, images.to(device)).float(), dim=-1))
                labels.append(targets.to(device))
        return torch.cat(feats), torch.cat(labels)

    backbone.eval()
    with tokens.paused(backbone):
        bank, bank_labels = features(train_loader)
        queries, truth = features(val_loader)
    classes = num_classes or int(bank_labels.max()) + 1
    sims, index = (queries @ bank.T).topk(min(k, len(bank)), dim=1)
    votes = torch.zeros(len(queries), classes, device=device)
    votes.scatter_add_(1, bank_labels[index], (sims / temperature).exp())
    return 100.0 * (votes.argmax(1) == truth).float().mean().item()


def _local_size(cfg: _recipes.SSLConfig, backbone: nn.Module, size: int) -> int:
    patch = backbone.patch_embed.patch_size[0]
    return cfg.local_crops_size or max(patch, round(size * 96 / 224 / patch) * patch)


def _warn_if_nothing_dropped(pruner: tokens.TokenPruner, backbone: nn.Module, size) -> None:
    """A keep rate that rounds every reducing block's share up to all its tokens (a few patches:
    small images) trains with no reduction; say so before the first epoch."""
    patch = backbone.patch_embed.patch_size
    patches = (size[-2] // patch[0]) * (size[-1] // patch[1])
    if pruner.config.method != "none" and pruner.kept_after(patches) == patches:
        log.warning("%s at keep rate %.2f keeps all %d patch tokens of a %dx%d image (patch %d) at every reducing block: "
                    "no token is dropped; give a larger %s or a lower %s",
                    pruner.config.method, pruner.final_rate, patches, size[-2], size[-1], patch[0], setting("input_size"), setting("keep_rate"))


def _check_memory(student: Branch, teacher: Branch, cfg: _recipes.SSLConfig, size, device: torch.device, cast, env: _dist.Env) -> None:
    """Refuse a batch that cannot fit before the first step (``_memory.check_batch``): per image,
    the student's two global views and its local crops, after the teacher's views (which a
    replaying student follows)."""
    local_size = _local_size(cfg, student.backbone, size[-1])

    def forward(n: int):
        views = torch.randn(2 * n, *size, device=device)
        local = torch.randn(cfg.local_crops_number * n, size[0], local_size, local_size, device=device) if cfg.local_crops_number else None
        with cast:
            with torch.no_grad():
                teacher(views)
            return student(views, local)

    student.train()
    teacher.train()
    crops = f"image: 2 views of {size[-2]}x{size[-1]}" + (f" and {cfg.local_crops_number} crops of {local_size}x{local_size}" if cfg.local_crops_number else "")
    _memory.check_batch(nn.ModuleList([student, teacher]), forward, cfg.batch_size, device,
                        copies=_memory.training_copies(2, env.world), processes=env.world,
                        local_processes=_memory.local_processes(), image=crops)


def _loaders(opts: Options, cfg: _recipes.SSLConfig, backbone: nn.Module, env: _dist.Env):
    import timm.data

    config = _data.data_config(backbone, opts.input_size)
    size = config["input_size"][-1]
    local_size = _local_size(cfg, backbone, size)
    train_dir = _data.splits(opts.data, "train")[0]
    train = _data.image_folder(train_dir, MultiCrop(cfg, size, local_size, config["mean"], config["std"]))
    if cfg.batch_size % env.world:
        raise IsopruneError(f"batch size {cfg.batch_size} does not split over {env.world} processes", hint="give a multiple of the process count")
    if len(train) < cfg.batch_size:
        raise IsopruneError(f"{train_dir} has {len(train)} images, fewer than one batch of {cfg.batch_size}", hint=f"lower {setting('batch_size')}")

    def train_loader(epoch):
        loader = _data.seeded_loader(train, cfg.batch_size, shuffle=True, seed=opts.seed, epoch=epoch, rank=env.rank,
                                     world=env.world, workers=opts.workers, drop_last=True)
        loader.collate_fn = _collate
        return loader

    knn = None
    if (Path(opts.data) / "val").is_dir():
        plain = timm.data.create_transform(**config, is_training=False)
        bank = _data.image_folder(train_dir, plain)
        val = _data.image_folder(Path(opts.data) / "val", plain, classes=bank.classes)  # labelled as the bank's
        knn = tuple(_data.seeded_loader(ds, cfg.batch_size, shuffle=False, seed=opts.seed, workers=opts.workers) for ds in (bank, val))
    return train_loader, knn, config["input_size"]


def _schedules(cfg: _recipes.SSLConfig, steps_per_epoch: int) -> dict[str, np.ndarray]:
    steps = cfg.epochs * steps_per_epoch
    return {
        "lr": cosine(cfg.lr * cfg.batch_size / 256, cfg.min_lr, steps, cfg.warmup_epochs * steps_per_epoch),
        "wd": cosine(cfg.weight_decay, cfg.weight_decay_end, steps),
        "momentum": cosine(cfg.momentum_teacher, 1.0, steps),
    }


def _optimizer(student: Branch) -> torch.optim.Optimizer:
    """AdamW; weight decay (scheduled per step) on weight matrices only: not on biases, norms, or
    the last layer's weight-norm gain."""
    decayed, plain = [], []
    for name, p in student.named_parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 or name.endswith(".original0") else decayed).append(p)
    return torch.optim.AdamW([{"params": decayed}, {"params": plain, "weight_decay": 0.0}])


def train(source: str, opts: Options, cfg: _recipes.SSLConfig, given: dict | None = None) -> dict:
    """DINO on ``opts.data``/train with ``cfg``'s token reduction; returns the epochs run, the last
    epoch's metrics and ``out``. Under torchrun every process calls this; rank 0 alone writes. A
    resumed run keeps its settings: one of ``given`` (those asked for) that differs is refused."""
    out = Path(opts.out)
    if opts.resume:
        state, saved = _read_checkpoint(out)
        cfg, opts = _finetune.resumed(saved, state["header"]["options"], opts, given or {})
    else:
        _io.check_writable(out, opts.force)
        state = None
    env, device = _dist.start(opts.device)
    torch.manual_seed(opts.seed)
    student, teacher, metadata = build(source, opts, cfg)
    train_loader, knn, size = _loaders(opts, cfg, student.backbone, env)
    steps_per_epoch = len(train_loader(0))
    schedule = _schedules(cfg, steps_per_epoch)
    criterion = DINOLoss(cfg.out_dim, cfg, steps_per_epoch).to(device)
    student.to(device)
    teacher.to(device)
    optimizer = _optimizer(student)
    cast, scaler = _finetune._autocast(device, cfg.amp)
    start, history = 0, []
    if state is not None:
        start, history = _restore(state, student, teacher, criterion, optimizer, scaler)
    _check_memory(student, teacher, cfg, size, device, cast, env)
    trained = nn.parallel.DistributedDataParallel(student) if env.world > 1 else student
    s_pruner, t_pruner = tokens.pruner_of(student.backbone), tokens.pruner_of(teacher.backbone)
    _warn_if_nothing_dropped(s_pruner, student.backbone, size)
    last_epoch = cfg.epochs if opts.stop_after is None else min(cfg.epochs, start + opts.stop_after)
    for epoch in range(start, last_epoch):
        _finetune._seed(opts.seed, epoch, env.rank)
        began, sums, kept = time.time(), [0.0, 0.0], []
        trained.train()
        teacher.train()  # reduction runs in train mode; the teacher has no dropout or stochastic depth
        bar = tqdm(_data.readable(train_loader(epoch)), desc=f"epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch, disable=not env.main)
        for i, (views, local) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            for pruner in (s_pruner, t_pruner):
                pruner.progress = step / max(cfg.epochs * steps_per_epoch - 1, 1)
            loss = _step(trained, teacher, criterion, optimizer, scaler, cast, schedule, cfg, views.to(device),
                         None if local is None else local.to(device), step, epoch)
            sums[0] += loss * len(views) / 2
            sums[1] += len(views) / 2
            kept.append(s_pruner.measured)
            bar.set_postfix(loss=f"{sums[0] / sums[1]:.4f}", lr=f"{schedule['lr'][step]:.2e}")
        train_loss, seen = env.sum(sums, device)
        row = {"epoch": epoch + 1, "train_loss": train_loss / seen, "lr": float(schedule["lr"][step]),
               "momentum": float(schedule["momentum"][step]), "keep_rate": s_pruner.keep_rate, "kept": float(np.mean(kept)),
               "seconds": time.time() - began}
        if knn is not None and env.main:
            row["knn_top1"] = knn_top1(teacher.backbone, *knn, device, cfg.knn_k, cfg.knn_temperature)
        history.append(row)
        if env.main:
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f}"
                       + (f", k-NN top-1 {row['knn_top1']:.2f}%" if "knn_top1" in row else ""), file=sys.stderr)
            _write_epoch(out, student, teacher, criterion, optimizer, scaler, cfg, opts, metadata, history, size)
            if state is None and epoch == start:  # with the first checkpoint: a run that fails before it leaves nothing
                (out / "config.yaml").write_text(yaml.safe_dump({"source": source, "ssl": asdict(cfg), "options": asdict(opts)}, sort_keys=False))
        env.barrier()
    _dist.stop(env)
    method = f"{cfg.tokens} (dynamic)" if cfg.dynamic else cfg.tokens
    return {"epochs": len(history), "tokens": method, "dynamic": cfg.dynamic, "last": history[-1] if history else None, "out": str(out)}


def _step(trained, teacher, criterion, optimizer, scaler, cast, schedule, cfg, views, local, step: int, epoch: int) -> float:
    for index, group in enumerate(optimizer.param_groups):
        group["lr"] = float(schedule["lr"][step])
        if index == 0:
            group["weight_decay"] = float(schedule["wd"][step])
    with cast:
        with torch.no_grad():
            target = teacher(views)  # the teacher first: a replaying student follows its choice
        loss = criterion(trained(views, local), target, step)
    if not torch.isfinite(loss):
        raise IsopruneError(f"the loss is {loss.item()} at epoch {epoch + 1}", hint=f"lower {setting('lr')}, or set {setting('clip_grad')}")
    optimizer.zero_grad(set_to_none=True)
    student = trained.module if hasattr(trained, "module") else trained
    penalty = tokens.pruner_of(student.backbone).penalty()  # dynamic SimPrune's sparsity term, else 0
    # DINO keeps the output layer fixed at first, which steadies training
    frozen = student.head.last_layer.parameters() if epoch < cfg.freeze_last_layer else ()
    _finetune._step(loss + penalty, optimizer, scaler, student, cfg.clip_grad, frozen, per_parameter=True)
    with torch.no_grad():
        m = float(schedule["momentum"][step])
        for s, t in zip(student.parameters(), teacher.parameters()):
            t.mul_(m).add_(s.detach(), alpha=1 - m)
    return loss.item()


# -- checkpoints ---------------------------------------------------------------------------------

def _write_epoch(out: Path, student, teacher, criterion, optimizer, scaler, cfg, opts, metadata, history, size) -> None:
    extra = {"config": metadata.get("config"), "ssl": asdict(cfg), "epoch": history[-1]["epoch"], "metrics": history[-1]}
    # token reduction adds no state, so the teacher's weights save (and reload) as a plain timm ViT
    _io.save(teacher.backbone, out / "backbone", plan=student.backbone.isoprune_plan, base=student.backbone.isoprune_base, overwrite=True, extra=extra,
             input_size=size)  # the global crops' size it was trained at
    tensors = {**_finetune._tensors("student.", student.state_dict()), **_finetune._tensors("teacher.", teacher.state_dict()),
               **_finetune._tensors("loss.", criterion.state_dict())}
    opt_tensors, opt_header = _finetune.optimizer_state(optimizer)
    header = {"epoch": history[-1]["epoch"], "history": history, "ssl": asdict(cfg), "options": asdict(opts),
              "scaler": scaler.state_dict() if scaler is not None else None, **opt_header}
    _finetune.write_checkpoint(out, {**tensors, **opt_tensors}, header)
    _write_metrics(out, history)


def _read_checkpoint(out: Path) -> tuple[dict, _recipes.SSLConfig]:
    state = _finetune.read_checkpoint_file(out)
    if "ssl" not in state["header"]:
        raise IsopruneError(f"{out / CHECKPOINT} is a fine-tuning checkpoint, not a self-supervised one", hint="resume it with isoprune finetune")
    return state, _recipes.build(_recipes.SSLConfig, state["header"]["ssl"], "ssl")


def _restore(state: dict, student, teacher, criterion, optimizer, scaler) -> tuple[int, list]:
    header, tensors = state["header"], state["tensors"]
    for prefix, module in (("student.", student), ("teacher.", teacher), ("loss.", criterion)):
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    _finetune.load_optimizer_state(optimizer, tensors, header)
    if scaler is not None and header["scaler"]:
        scaler.load_state_dict(header["scaler"])
    return header["epoch"], header["history"]


def _write_metrics(out: Path, history: list[dict]) -> None:
    import csv

    from ._report import draw_ssl_curves

    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[-1]))
        writer.writeheader()
        writer.writerows(history)
    (out / "metrics.json").write_text(json.dumps(history, indent=1))
    draw_ssl_curves(history, out / "curves.png")


def run(source: str | Path, data: str | Path, out: str | Path | None = None, *, recipe: str | None = None, **settings) -> dict:
    """Pre-train ``source`` (a timm ViT name, or a directory ``isoprune prune`` wrote) with DINO on
    the ImageFolder ``data`` (``train/``; ``val/`` too for the k-NN accuracy each epoch), as
    ``isoprune ssl`` does. ``settings`` are ``SSLConfig`` fields (``tokens="simprune",
    keep_rate=0.8, epochs=100``) over the recipe's ``ssl`` section, and run options as for
    :func:`isoprune.finetune` (``weights`` defaults to ``none``: DINO starts from scratch)."""
    trained = {f.name for f in fields(_recipes.SSLConfig)}
    running = {f.name for f in fields(Options)} - {"data", "out"}
    unknown = sorted(set(settings) - trained - running)
    if unknown:
        raise IsopruneError(f"unknown self-supervised setting {unknown[0]!r}", hint=f"valid: {', '.join(sorted(trained | running))}")
    cfg = _recipes.load_recipe(recipe).ssl if recipe else _recipes.SSLConfig()
    cfg = replace(cfg, **{k: v for k, v in settings.items() if k in trained and v is not None})
    token_config(cfg)  # bad token settings fail before any work
    source = str(source)
    name = Path(source).resolve().name if Path(source).is_dir() else _models.architecture(source)
    run_options = {"weights": "none", **{k: v for k, v in settings.items() if k in running and v is not None}}
    opts = Options(data=str(data), out=str(out or f"ssl/{name}-{cfg.method}-{cfg.tokens}"), **run_options)
    return train(source, opts, cfg, settings)
