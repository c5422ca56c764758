"""The prune command as a library function: config in, pruned model and plan out.

The CLI only turns flags into a ``PruneConfig`` and prints; everything it does is reachable here.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from . import _data, _dist, _importance, _memory, _models, _recipes, _trace
from ._apply import apply_plan, fit
from ._errors import IsopruneError
from ._io import check_writable, is_saved, load_for_classes, pruned_from, read_metadata, save, saved_side
from ._latency import Timing
from ._plan import Budget, PruningPlan, plan
from ._recalibrate import recalibrate_bn

log = logging.getLogger("isoprune")


def resolve_target(cfg: _recipes.PruneConfig, target: str) -> tuple[_recipes.PruneConfig, str | None]:
    """Fold ``--target`` into the config. In order: a recipe file; a named target (``deit_s``:
    its recipe's ratios, depth, budget and rounding, for that recipe's base model); a budget
    (``4.2G``, ``20M``, ``50%``, ``latency=50%``); a timm model name, whose MACs become the
    budget. Also returns the recipe file the shape came from, if any."""
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        return _shape_from(cfg, _recipes.load_recipe(target)), target
    named = _recipes.named_targets().get(target.lower())
    if named:
        arch = _models.architecture(base_name(cfg.model))
        for path, recipe in named:
            if _models.architecture(recipe.prune.model) == arch:
                return _shape_from(cfg, recipe), str(path)
        bases = ", ".join(sorted({_models.architecture(r.prune.model) for _, r in named}))
        raise IsopruneError(
            f"target {target!r} is defined for {bases}, not {arch}",
            hint="for other models give a budget such as 4.2G (MACs) or 20M (params)",
        )
    if "=" in target or target.strip()[:1] in "0123456789.":  # a budget (no model name looks so): its own error if it is a bad one
        Budget.parse(target)
        return replace(cfg, target=target), None
    try:
        name = _models.resolve(target)
    except IsopruneError:
        raise IsopruneError(
            f"cannot read target {target!r}",
            hint="give a named target (deit_s, convnext_t ...), a recipe file, a budget (4.2G MACs, 20M params, latency=50%) or a timm model name",
        ) from None
    return replace(cfg, target=f"macs={macs_of(name, cfg.input_size) / 1e9:.6f}G"), None


def _shape_from(cfg, recipe: _recipes.Recipe) -> _recipes.PruneConfig:
    p = recipe.prune
    return replace(cfg, ratios=dict(p.ratios), depth=dict(p.depth), target=p.target, round_to=p.round_to)


def recipe_budget_at(cfg: _recipes.PruneConfig, written: _recipes.PruneConfig) -> _recipes.PruneConfig:
    """A recipe's MACs budget counts at the input size it was written for (``written``'s, by
    default the model's own); at another ``--input-size`` it is the same share of the model's
    MACs, as the paper's shapes scale (ResNet-50's 2.0 G is 48.5% of it at 224x224). A saved
    model pruned further gets that share of its base at the size it was saved for."""
    budget = Budget.parse(cfg.target) if cfg.target else None
    if budget is None or budget.metric != "macs" or budget.fraction is not None or cfg.input_size == written.input_size:
        return cfg
    name = _models.resolve(base_name(cfg.model))
    was, now = macs_of(name, written.input_size), macs_of(name, cfg.input_size)
    if was == now:  # one of them the model's own size
        return cfg
    share = 100 * budget.value / was
    log.warning("the recipe's %s, %.2f%% of %s at the input size it was written for, are taken as that share at %s",
                budget, share, name, f"{cfg.input_size}x{cfg.input_size}" if cfg.input_size else "the model's own input size")
    if is_saved(cfg.model):  # a share of the saved model itself would be of what is left
        return replace(cfg, target=f"macs={share * now / 100 / 1e9:.6f}G")
    return replace(cfg, target=f"macs={share:.4f}%")


def base_name(model: str) -> str:
    """The timm name a model is built from: ``model`` itself, or the base of a saved model."""
    return read_metadata(model)["base"]["name"] if is_saved(model) else model


def source_model(cfg: _recipes.PruneConfig) -> nn.Module:
    """The model to prune: a timm name built with ``cfg.weights``, or a directory isoprune saved (a
    pruned or fine-tuned model, pruned further with its own weights, classes and input size)."""
    kwargs = {"num_classes": cfg.num_classes} if cfg.num_classes is not None else {}
    if not is_saved(cfg.model):
        return _models.create(cfg.model, cfg.weights, input_size=cfg.input_size, **kwargs)
    if cfg.weights != "pretrained":
        raise IsopruneError(f"{cfg.model} is a saved model with weights of its own; --weights {cfg.weights} would replace them",
                            hint="drop --weights")
    model = load_for_classes(cfg.model, cfg.num_classes)
    side = saved_side(cfg.model)
    if cfg.input_size is not None and side is not None and cfg.input_size != side:
        raise IsopruneError(f"{cfg.model} was saved for {side}x{side} inputs, not {cfg.input_size}x{cfg.input_size}",
                            hint="drop --input-size: a saved model is pruned further at the size it was trained for")
    return model


def macs_of(name: str, input_size: int | None = None) -> int:
    """MACs of a timm model, built on the meta device (no memory, no weights); at ``input_size``
    squared, for which a model that takes one size is built."""
    import timm

    sized = _models.sized_for(name, input_size, {}) if input_size else {}
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **sized)
    return _trace.count(model, meta_example(model, input_size))[0]


def meta_example(model: nn.Module, input_size: int | None):
    """A meta-device example input: the model's own size, or ``input_size`` squared."""
    size = None if input_size is None else (_trace.input_size(model)[0], input_size, input_size)
    return _trace.meta_inputs(model, size=size)


def _calibration_piece(model: nn.Module, cfg, device: torch.device) -> int | None:
    """How many images of a calibration batch go through the model at once (``_memory.piece_size``):
    a gradient criterion keeps a batch's activations for the backward pass, and its statistics, one
    model size each; a batch that does not fit goes in pieces, with the same gradients."""
    example = meta_example(model, cfg.input_size)
    if not isinstance(example, torch.Tensor):
        return None
    size = tuple(example.shape[1:])
    model.eval()
    return _memory.piece_size(model, lambda n: model(torch.randn(n, *size, device=device)), cfg.batch_size, device,
                              copies=len(_importance.get_importance(cfg.importance).stats), local_processes=_memory.local_processes(),
                              image=f"{size[-2]}x{size[-1]} image", what="calibration batch")


def calibration_batches(data: str | Path, model: nn.Module, batch_size: int, seed: int = 0, limit: int | None = None,
                        rank: int = 0, world: int = 1, input_size: int | None = None):
    """Shuffled (images, labels) batches from an ImageFolder (``DIR/train`` when there is one),
    with timm's eval transforms for the model's pretrained config, at ``input_size`` squared when
    given: the first ``limit`` batches of one seeded permutation, of which process ``rank`` of
    ``world`` takes every ``world``-th, so that torchrun's processes share out exactly the batches
    one process would see."""
    import timm.data

    root = Path(data)
    root = root / "train" if (root / "train").is_dir() else root
    dataset = _data.image_folder(root, timm.data.create_transform(**_data.data_config(model, input_size), is_training=False))
    _data.check_classes(dataset, model, str(root))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)][:limit]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches[rank::world])
    return _data.readable(loader)


def plan_source(path: str | Path) -> str | None:
    """The saved model a plan (a directory's, or a plan file) was made on, where it was made on one
    (the plan's ``model`` names only the base); an error where that model is no longer there."""
    source = pruned_from(read_metadata(path)) if is_saved(path) else read_plan(path).made_on
    if source and not is_saved(source):
        raise IsopruneError(f"the plan in {path} was made on the saved model {source}, which is not there",
                            hint="give that model's directory, wherever it is now, as --model")
    return source


def plan_model(path: str | Path) -> str:
    """The model a saved plan is applied to unless another is given: the saved model it was made
    on (``plan_source``), else the base model it names."""
    return plan_source(path) or read_plan(path).model


def read_plan(path: str | Path) -> PruningPlan:
    """A saved plan: a ``plan.yaml``/``.json`` file, or a directory written by ``isoprune prune``."""
    path = Path(path)
    if path.is_dir():
        return PruningPlan.from_dict(read_metadata(path)["plan"])
    return PruningPlan.load(path)


def run(cfg: _recipes.PruneConfig, data: str | None = None, *, env: _dist.Env | None = None,
        device: torch.device | str = "cpu") -> tuple[nn.Module, PruningPlan]:
    """Build the model and plan (searching the budget if one is set); return both, on the CPU.
    Calibration runs on ``device``; the processes of ``env`` (torchrun's) share out its batches."""
    saved = read_plan(cfg.plan) if cfg.plan else None
    if saved is not None and not cfg.model:
        cfg = replace(cfg, model=plan_model(cfg.plan))
    if saved is not None and cfg.input_size is None and len(saved.input_size) == 3 and saved.input_size[1] == saved.input_size[2]:
        cfg = replace(cfg, input_size=saved.input_size[1])  # the size it was made at: a ViT built for it, BatchNorm measured at it
    if not cfg.model:
        raise IsopruneError("no model given", hint="pass --model NAME (or a recipe with prune.model)")
    env = env or _dist.Env()
    timing = None
    if cfg.target is not None and Budget.parse(cfg.target).metric == "latency":  # fail on a bad budget before building anything
        if env.world > 1:
            raise IsopruneError("a latency target is timed by one process", hint="run isoprune prune without torchrun")
        timing = Timing(cfg.latency_batch, cfg.dtype, cfg.channels_last)
    if cfg.recalibrate_bn < 0:
        raise IsopruneError(f"recalibrate_bn must be a number of batches, not {cfg.recalibrate_bn}", hint="pass --recalibrate-bn 0 (off) or more")
    if cfg.recalibrate_bn and data is None:
        raise IsopruneError("recalibrating BatchNorm needs data", hint="pass --data DIR (an ImageFolder), or drop --recalibrate-bn")
    needs_calib = saved is None and _importance.get_importance(cfg.importance).needs_calib
    if needs_calib and data is None:
        raise IsopruneError(f"importance {cfg.importance!r} needs data to compute gradients", hint="pass --data DIR (an ImageFolder), or --importance l2")
    if data is not None:  # these two before the model is built: seconds and gigabytes for DeiT-B
        _data.data_dir(data)
    torch.manual_seed(cfg.seed)
    model = source_model(cfg)
    if saved is not None:
        return model, _made_on(fit(model, saved, meta_example(model, cfg.input_size) if cfg.input_size else None), cfg)
    calib = None
    if needs_calib:
        calib = calibration_batches(data, model, cfg.batch_size, cfg.seed, cfg.calib_batches, env.rank, env.world, cfg.input_size)
    elif data is not None:
        calibration_batches(data, model, cfg.batch_size, cfg.seed, input_size=cfg.input_size)  # still check it, the user asked for it
    model.to(device)
    pruning = plan(
        model,
        cfg.ratios,
        importance=cfg.importance,
        calib=calib,
        calib_batches=cfg.calib_batches,
        calib_chunk=None if calib is None else _calibration_piece(model, cfg, device),
        scope=cfg.scope,
        round_to=cfg.round_to,
        example_inputs=meta_example(model, cfg.input_size),
        labels=cfg.labels,
        depth=cfg.depth,
        budget=cfg.target,
        timing=timing,
    )
    return model.cpu(), _made_on(pruning, cfg)


def _made_on(pruning: PruningPlan, cfg: _recipes.PruneConfig) -> PruningPlan:
    """The plan, naming the saved model it was made on (if any): a plan file given alone is applied to it."""
    pruning.made_on = str(Path(cfg.model).resolve()) if is_saved(cfg.model) else None
    return pruning


def write(model: nn.Module, pruning: PruningPlan, cfg: _recipes.PruneConfig, out, *, force: bool = False, recipe: str | None = None,
          data: str | None = None, device: torch.device | str = "cpu") -> Path:
    """Apply the plan, measure the BatchNorm statistics again on ``cfg.recalibrate_bn`` batches of
    ``data`` (on ``device``) if asked, and write the model, its metadata, the plan as YAML and
    ``report.png``. ``recipe`` is recorded so that fine-tuning takes its ``finetune`` section by
    default."""
    from ._report import draw_report

    check_writable(out, force)
    scores = getattr(pruning, "_scores", None)
    apply_plan(model, pruning)
    if cfg.recalibrate_bn:
        batches = calibration_batches(data, model, cfg.batch_size, cfg.seed, cfg.recalibrate_bn, input_size=cfg.input_size)
        recalibrate_bn(model.to(device), batches, device)
        model.cpu()
    if recipe is not None and Path(recipe).is_file():
        recipe = str(Path(recipe).resolve())
    if cfg.weights not in ("pretrained", "none"):
        cfg = replace(cfg, weights=str(Path(cfg.weights).resolve()))  # the teacher of a later fine-tune loads it
    if is_saved(cfg.model):
        cfg = replace(cfg, model=str(Path(cfg.model).resolve()))  # likewise: the model this one was pruned from
    out = save(model, out, plan=pruning, overwrite=force, extra={"config": {**asdict(cfg), "recipe": recipe}})
    pruning.save(out / "plan.yaml")
    draw_report(pruning, out / "report.png", scores)
    return out


def summary(pruning: PruningPlan, out: Path | None = None) -> dict:
    """Machine-readable outcome, as ``--json`` prints it."""
    return {
        "model": pruning.model,
        "macs": pruning.macs,
        "params": pruning.params,
        "ratios": pruning.ratios,
        "depth": pruning.depth,
        "search": pruning.search,
        "made_on": pruning.made_on,
        "groups": [
            {"signature": g.signature, "kind": g.kind, "root": g.root, "channels": g.channels * g.blocks, "kept": len(g.keep) * g.blocks}
            for g in pruning.groups
        ],
        "out": str(out) if out else None,
    }
