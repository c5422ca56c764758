"""``isoprune`` command line: a thin layer that builds configs and calls the library.

Every failure a user can cause ends as one line on stderr and exit status 2, before anything is
written. The library (torch, timm) is imported once a command runs: ``--help``, ``--version`` and
a mistyped flag answer at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import types
import typing
from dataclasses import MISSING, fields, replace
from pathlib import Path

from . import __version__, _recipes
from ._errors import IsopruneError, command_line
from ._recipes import DTYPES, KINDS, SCOPES


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)  # a misspelt flag is an error, not a guess

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but flags a command does not take are that command's error, whose
        ``--help`` lists the flags it does take."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            commands = next((a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)), {})
            commands.get(getattr(parsed, "command", None), self).error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed

    def error(self, message):  # one line, not usage + message; main() prints "isoprune: error:" before it
        where = "" if self.prog == "isoprune" else f"{self.prog.removeprefix('isoprune ')}: "
        raise IsopruneError(f"{where}{message}", hint=f"see {self.prog} --help")


def _ratios(text: str) -> dict[str, float]:
    """``emb=0.5,heads=0.5`` or one number for every kind."""
    try:
        if "=" not in text:
            return {k: float(text) for k in (*KINDS, "default")}
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
        return {k.strip(): float(v) for k, v in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read ratios {text!r}: write emb=0.5,heads=0.5,head_dim=0.25,mlp=0.5 or one number") from None


def _depth(text: str) -> dict[str, int]:
    try:
        return {k.strip(): int(v) for k, v in (item.split("=", 1) for item in text.split(",") if item.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read depth {text!r}: write CONTAINER=N, e.g. stages.2.blocks=18") from None


def _number(limit: _recipes.Range = _recipes.COUNT):
    """An argparse type: a whole number within ``limit`` (at least 1 by default)."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value not in limit:
            raise argparse.ArgumentTypeError(f"must be {limit}, not {value}")
        return value

    return whole


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="isoprune", description="Isomorphic structural pruning for vision models.")
    parser.add_argument("--version", action="version", version=f"isoprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("prune", help="prune a model to a target, ratios or recipe")
    p.add_argument("--model", help="timm model name or alias (deit_base, convnext_b, mobilenetv2, ...), hf-hub:OWNER/REPO, local-dir:PATH, or a directory isoprune saved, to prune further")
    p.add_argument("--weights", help="pretrained (default; timm download), none (random init), or a checkpoint PATH")
    p.add_argument("--num-classes", type=int, help="build the model with this many classes")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--target", help="named target (deit_s), recipe file, budget (4.2G MACs, 20M params, latency=50%%, "
                                      "latency=12ms: timed as below) or timm model name")
    how.add_argument("--ratios", type=_ratios, help="emb=0.5,heads=0.5,head_dim=0.25,mlp=0.5,default=0.3, or one number")
    how.add_argument("--plan", help="apply a saved plan as it is: a plan.yaml, or a directory isoprune prune wrote")
    p.add_argument("--recipe", help="recipe YAML (or the name of one in recipes/); flags override its values")
    p.add_argument("--depth", type=_depth, help="remove blocks: CONTAINER=N, e.g. stages.2.blocks=18")
    p.add_argument("--importance", help="l1, l2 (default), taylor, hessian or random")
    p.add_argument("--data", help="ImageFolder for taylor/hessian calibration (DIR or DIR/train)")
    p.add_argument("--calib-batches", type=int, help="calibration batches (default 50)")
    p.add_argument("--batch-size", type=int, help="calibration batch size (default 64; one that does not fit in memory goes through in pieces)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where calibration runs (torchrun: one GPU per process)")
    p.add_argument("--recalibrate-bn", type=int, metavar="N",
                   help="measure the pruned model's BatchNorm statistics again on N batches of --data (default 0: keep the original's)")
    p.add_argument("--scope", choices=SCOPES, help="rank within isomorphic groups (default), globally, or per group")
    p.add_argument("--round-to", type=int, help="keep channel counts multiples of N (8 or more: faster on GPUs and CPUs)")
    p.add_argument("--input-size", type=int, help="square input resolution (default: the model's; for a saved one, the size it was pruned or trained at)")
    p.add_argument("--latency-batch", type=int, help="batch size a latency target is timed at, on --device (default 32)")
    p.add_argument("--dtype", choices=list(DTYPES), help="precision a latency target is timed in (default float32; float16 as deployed on a GPU)")
    p.add_argument("--channels-last", action="store_true", default=None, help="time a latency target in channels-last memory format")
    p.add_argument("--seed", type=int, help="random seed (random init, data order, random importance)")
    p.add_argument("--out", help="output directory (default: pruned/MODEL)")
    p.add_argument("--force", action="store_true", help="replace isoprune's files in a non-empty --out")
    p.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")

    f = sub.add_parser("finetune", help="fine-tune a pruned model (or train one by name), with distillation; torchrun for many processes")
    f.add_argument("path", nargs="?", help="a directory written by isoprune prune (or finetune)")
    f.add_argument("--model", help="train this timm model (by name) instead of a pruned directory")
    f.add_argument("--weights", help="for --model: pretrained (default), none, or a checkpoint PATH")
    f.add_argument("--data", required=True, help="ImageFolder root with train/ and val/")
    f.add_argument("--recipe", help="recipe YAML or name whose finetune section gives the defaults (default: the one the model was pruned with)")
    f.add_argument("--num-classes", type=int, help="give the model a new head for this many classes")
    f.add_argument("--input-size", type=int, help="square input resolution (default: the model's; for a saved one, the size it was pruned or trained at)")
    _training_flags(f, "finetuned/NAME")
    _config_flags(f, _recipes.FinetuneConfig, "the finetune section of --recipe, or of the recipe the model was pruned with,")

    s = sub.add_parser("ssl", help="self-supervised pre-training of a ViT (DINO) with token reduction (SimPrune, EViT, ToMe); torchrun for many processes")
    s.add_argument("path", nargs="?", help="a directory written by isoprune prune (a width-pruned ViT)")
    s.add_argument("--model", help="a timm ViT by name (deit_small_patch16_224, vit_base_patch16_224 ...)")
    s.add_argument("--weights", help="for --model: none (default: DINO starts from scratch), pretrained, or a checkpoint PATH")
    s.add_argument("--data", required=True, help="ImageFolder root with train/ (and val/ for k-NN accuracy each epoch)")
    s.add_argument("--recipe", help="recipe YAML or name whose ssl section gives the defaults")
    s.add_argument("--input-size", type=int, help="square size of the global crops (default: the model's)")
    _training_flags(s, "ssl/NAME-METHOD-TOKENS")
    _config_flags(s, _recipes.SSLConfig, "the ssl section of --recipe")

    e = sub.add_parser("eval", help="top-1/top-5, loss, MACs, params, latency and throughput")
    e.add_argument("path", nargs="?", help="a directory written by isoprune prune or finetune")
    e.add_argument("--model", help="a timm model name instead of a directory")
    e.add_argument("--weights", help="for --model: pretrained (default), none, or a checkpoint PATH")
    e.add_argument("--num-classes", type=_number(), help="for --model: number of classes")
    e.add_argument("--data", help="ImageFolder (its val/ when present); without it only size and speed")
    e.add_argument("--input-size", type=_number(), help="square input resolution (default: the model's; for a saved one, the size it was pruned or trained at)")
    e.add_argument("--batch-size", type=_number(), default=64, help="images per forward pass, evaluated and timed (default 64)")
    e.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to evaluate and time (default cpu)")
    e.add_argument("--workers", type=_number(_recipes.NONNEGATIVE), default=0, help="data loading processes (default 0)")
    e.add_argument("--warmup", type=_number(_recipes.NONNEGATIVE), default=5, help="untimed forward passes before timing (default 5)")
    e.add_argument("--iters", type=_number(), default=20, help="timed forward passes (default 20)")
    e.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="weights and inputs in this precision (float16: as deployed on a GPU)")
    e.add_argument("--channels-last", action="store_true", help="weights and inputs in channels-last memory format (faster convolutions)")
    e.add_argument("--json", action="store_true", help="print a JSON summary on stdout")

    i = sub.add_parser("inspect", help="show a model's isomorphic groups, or summarise a pruned model")
    i.add_argument("path", nargs="?", help="a directory written by isoprune prune, a plan file (plan.yaml), or a model's name (as --model)")
    i.add_argument("--model", help="timm model name or alias")
    i.add_argument("--input-size", type=_number())
    i.add_argument("--json", action="store_true")
    return parser


def _training_flags(parser, default_out: str) -> None:
    """How a training command runs (the ``Options`` fields), shared by finetune and ssl."""
    parser.add_argument("--out", help=f"output directory (default: {default_out})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--stop-after", type=int, help="end this run after N epochs (continue later with --resume)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train; under torchrun, each process's GPU (default cpu)")
    parser.add_argument("--workers", type=int, default=0, help="data loading processes (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data order, augmentation and dropout (default 0)")
    parser.add_argument("--force", action="store_true", help="start afresh in a non-empty --out")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def _config_flags(parser, cls, recipe: str) -> None:
    """One flag per field of the config dataclass (``--lr``, ``--drop-path``, ``--no-amp`` ...): the
    recipe's value unless given; its help says what it does (``cls.HELP``), its default and its range."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.SECTION} settings", f"each defaults to {recipe} where it has a value, else to the one shown")
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        union = typing.get_origin(kind) in (typing.Union, types.UnionType)
        options = [a for a in typing.get_args(kind) if a is not type(None)] if union else [kind]
        base = typing.get_origin(options[0]) or options[0]
        limit = cls.LIMITS.get(f.name) or cls.PAIRS.get(f.name, (None,))[0]
        default = _shown(f.default_factory() if f.default_factory is not MISSING else f.default)
        described = f"{cls.HELP.get(f.name, '')} (default {default}{f'; {limit}' if limit else ''})".replace("%", "%%").lstrip()
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=described)
        elif base is list:
            group.add_argument(flag, type=typing.get_args(options[0])[0], nargs="+", help=described)
        else:
            group.add_argument(flag, type=base, help=described)


def _shown(value) -> str:
    """A setting's default as its help gives it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _given(args, cls) -> dict:
    """The flags given on the command line for ``cls``'s fields."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def prune_config(args) -> tuple[_recipes.PruneConfig, str | None]:
    """Recipe values, then a target's shape, then explicit flags; and the recipe they came from
    (``--recipe``, else a named target's), whose finetune section a later fine-tune takes."""
    from . import _io, _pipeline
    from ._plan import Budget

    if args.plan and (args.recipe or args.depth):
        raise IsopruneError("--plan applies a saved plan as it is", hint="drop --recipe and --depth, or drop --plan")
    cfg = _recipes.load_recipe(args.recipe).prune if args.recipe else _recipes.PruneConfig()
    flags = _given(args, _recipes.PruneConfig)
    flags.pop("target", None)
    cfg = replace(cfg, **{k: v for k, v in flags.items() if k in ("model", "input_size")})
    if cfg.model and _io.is_saved(cfg.model) and cfg.input_size is None:  # pruned further at the size it was saved for
        cfg = replace(cfg, input_size=_io.saved_side(cfg.model))
    recipe, from_target = args.recipe, None
    if args.target:
        cfg, from_target = _pipeline.resolve_target(cfg, args.target)
        recipe = recipe or from_target
    if args.ratios is not None:
        cfg = replace(cfg, target=None)
    cfg = replace(cfg, **flags)
    if recipe and cfg.model and (from_target or not args.target):  # the budget is the recipe's
        cfg = _pipeline.recipe_budget_at(cfg, _recipes.load_recipe(from_target or recipe).prune)
    if cfg.plan and not cfg.model:
        cfg = replace(cfg, model=_pipeline.plan_model(cfg.plan))
    if not cfg.ratios and cfg.target is None and not cfg.depth and not cfg.plan:
        raise IsopruneError("nothing to prune", hint="pass --target, --ratios or --recipe")
    timing = [f"--{k.replace('_', '-')}" for k in ("latency_batch", "dtype", "channels_last") if k in flags]
    if timing and (cfg.target is None or Budget.parse(cfg.target).metric != "latency"):
        raise IsopruneError(f"{', '.join(timing)} without a latency target: nothing is timed", hint="pass --target latency=50% (or 12ms), or drop them")
    return cfg, recipe


def cmd_prune(args) -> int:
    from . import _dist, _io, _models, _pipeline
    from ._recalibrate import batch_norms

    cfg, recipe = prune_config(args)
    if args.out:
        out = Path(args.out)
    elif cfg.model and _io.is_saved(cfg.model):  # pruned further: beside it
        out = Path(cfg.model).with_name(f"{Path(cfg.model).name}-pruned")
    else:
        out = Path(f"pruned/{_models.architecture(cfg.model or 'model')}")
    if not args.dry_run:
        _io.check_writable(out, args.force)  # before any work: nothing is touched if it fails
    env, device = _dist.start(args.device)
    try:
        model, pruning = _pipeline.run(cfg, data=args.data, env=env, device=device)
        if not env.main:
            return 0  # under torchrun, the other processes only lend their share of the calibration
        text = _describe(pruning)
        if not args.dry_run:
            out = _pipeline.write(model, pruning, cfg, out, force=args.force, recipe=recipe, data=args.data, device=device)
            if cfg.recalibrate_bn and batch_norms(model):
                text += f"\nBatchNorm statistics measured again on up to {cfg.recalibrate_bn} batches of {args.data}"
            text += f"\nwrote {out}/ (model.safetensors, isoprune.json, plan.yaml, report.png)"
        _emit(text, _pipeline.summary(pruning, None if args.dry_run else out), args.json)
        return 0
    finally:
        _dist.stop(env)


def _describe(pruning) -> str:
    changed = [
        f"  {name:<40} {w['before'][0]:>5}x{w['before'][1]:<5} -> " + ("removed" if w["after"] is None else f"{w['after'][0]}x{w['after'][1]}")
        for name, w in pruning.widths.items()
        if w["after"] != w["before"]
    ]
    return "\n".join([pruning.summary(), f"layers changed ({len(changed)} of {len(pruning.widths)}), in x out:", *changed])


def _emit(text: str, data: dict, as_json: bool) -> None:
    if as_json:
        print(text, file=sys.stderr)
        print(json.dumps(data, indent=1))
    else:
        print(text)


def _own_file(path: Path, command: str) -> None:
    """An error where ``path`` is a file of a saved model: the model is its directory."""
    from . import _io

    if path.is_file() and _io.is_saved(path.parent):
        raise IsopruneError(f"{path} is a file of the saved model {path.parent}", hint=f"give its directory: isoprune {command} {path.parent}")


def _source(args) -> str:
    if bool(args.path) == bool(args.model):
        raise IsopruneError(f"{args.command} needs a pruned directory or --model NAME (one of them)")
    if args.path and Path(args.path).is_file():  # a checkpoint, or a saved model's own file
        path = Path(args.path)
        _own_file(path, args.command)
        raise IsopruneError(f"{path} is a file, not a directory isoprune saved",
                            hint=f"for a checkpoint, give its architecture: isoprune {args.command} --model NAME --weights {path}")
    return args.path or args.model


def cmd_finetune(args) -> int:
    from ._finetune import Options, run

    given = {**_given(args, Options), **_given(args, _recipes.FinetuneConfig)}
    settings = {k: v for k, v in given.items() if k not in ("data", "out")}
    result = run(_source(args), args.data, args.out, recipe=args.recipe, **settings)
    if int(os.environ.get("RANK", 0)) == 0:
        best, last = result["best"], result["last"]
        text = f"wrote {result['out']}/ (best/, last/, checkpoint.safetensors, metrics.csv, curves.png)"
        if last:
            text = f"best top-1 {best['top1']:.2f}% (epoch {best['epoch']}), last {last['top1']:.2f}%\n" + text
        _emit(text, result, args.json)
    return 0


def cmd_ssl(args) -> int:
    from ._finetune import Options
    from ._ssl import run

    given = {**_given(args, Options), **_given(args, _recipes.SSLConfig)}
    settings = {k: v for k, v in given.items() if k not in ("data", "out")}
    result = run(_source(args), args.data, args.out, recipe=args.recipe, **settings)
    if int(os.environ.get("RANK", 0)) == 0:
        last = result["last"]
        text = f"wrote {result['out']}/ (backbone/, checkpoint.safetensors, metrics.csv, curves.png)"
        if last:
            knn = f", k-NN top-1 {last['knn_top1']:.2f}%" if "knn_top1" in last else ""
            rate = "learned keep rate, at least" if result["dynamic"] else "keep rate"
            # a run resumed from before the kept share was measured has none in its history
            kept = f", {100 * last['kept']:.1f}% of patch tokens kept per reducing block" if "kept" in last else ""
            text = (f"epoch {last['epoch']} with token reduction {result['tokens']} ({rate} {last['keep_rate']:.2f}{kept}): "
                    f"DINO loss {last['train_loss']:.4f}{knn}\n" + text)
        _emit(text, result, args.json)
    return 0


def cmd_eval(args) -> int:
    from ._eval import run
    from ._latency import described
    from ._plan import figure

    result = run(_source(args), args.data, weights=args.weights, num_classes=args.num_classes, input_size=args.input_size,
                 batch_size=args.batch_size, device=args.device, workers=args.workers, warmup=args.warmup, iters=args.iters,
                 dtype=args.dtype, channels_last=args.channels_last)
    rows = [f"{result['model']}: {figure(result['macs'], 'macs')} MACs, {figure(result['params'], 'params')} params, input {result['input_size']}"]
    if "top1" in result:
        rows.append(f"top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%, loss {result['loss']:.4f} on {result['images']} images")
    rows.append(f"latency {result['latency_ms']:.2f} ms (IQR {result['latency_iqr_ms']:.2f}) at batch {result['batch_size']} on "
                f"{result['device']} ({described(result['dtype'], result['channels_last'])}), {result['throughput']:.1f} images/s")
    _emit("\n".join(rows), result, args.json)
    return 0


def _inspected(args) -> None:
    """What ``inspect PATH`` was given, where PATH is not a saved model or a plan file: a model's
    name is taken as ``--model``; a saved model's own file, or nothing at all, is an error."""
    from . import _io, _models

    path = Path(args.path)
    if path.name in (_io.WEIGHTS, _io.METADATA):  # not its plan.yaml, a plan file inspect reads
        _own_file(path, "inspect")
    if path.exists() or args.model:
        return
    try:
        _models.resolve(args.path)
    except IsopruneError as err:
        raise IsopruneError(f"no saved model or plan at {args.path}, and no model of that name", hint=err.hint) from None
    args.model, args.path = args.path, None


def cmd_inspect(args) -> int:
    from . import _io, _models, _pipeline
    from ._plan import PruningPlan, before_after, figure

    if args.path:
        _inspected(args)
    if args.path and Path(args.path).is_file() and Path(args.path).suffix in (".yaml", ".yml", ".json"):  # a plan file
        pruning = PruningPlan.load(args.path)
        made_on = f", made on {pruning.made_on}" if pruning.made_on else ""
        _emit(f"plan for {pruning.model}, input {pruning.input_size}{made_on}\n{_describe(pruning)}", _pipeline.summary(pruning), args.json)
        return 0
    if args.path:
        metadata = _io.read_metadata(args.path)
        pruning = PruningPlan.from_dict(metadata["plan"])
        base = metadata["base"]
        size = metadata.get("input_size") or pruning.input_size  # what it was pruned or trained at
        origin = f" from {base['source']}" if base.get("source") else ""  # a Hub repo or a folder
        text = f"base {base['library']}:{base['name']} {base['kwargs']}{origin}, input {size}\n{_describe(pruning)}"
        earlier = [PruningPlan.from_dict(d) for d in metadata.get("earlier", [])]
        source = _io.pruned_from(metadata)
        if earlier:  # pruned again: the plan above starts from what the earlier ones left
            text += (f"\npruned further from {source or 'a saved model'} ({len(earlier) + 1} plans in all); from the base: " +
                     before_after({"before": earlier[0].macs["before"], "after": pruning.macs["after"]},
                                  {"before": earlier[0].params["before"], "after": pruning.params["after"]}))
        elif source:  # pruned from a saved model that was trained whole
            text += f"\npruned from {source}"
        result = {"base": base, "input_size": size, **_pipeline.summary(pruning, Path(args.path))}
        if earlier:
            result["earlier"] = [_pipeline.summary(p) for p in earlier]
        _emit(text, result, args.json)
        return 0
    if not args.model:
        raise IsopruneError("inspect needs a pruned directory or --model NAME")
    import torch

    from ._api import count, isomorphic_groups

    with torch.device("meta"):
        model = _models.create(args.model, "none", input_size=args.input_size)
    inputs = _pipeline.meta_example(model, args.input_size)
    groups = isomorphic_groups(model, inputs)
    macs, params = count(model, inputs)
    rows = [f"{_models.resolve(args.model)}: {figure(macs, 'macs')} MACs, {figure(params, 'params')} params, {len(groups)} isomorphic groups"]
    for iso in groups:
        rows.append(f"{iso.signature:<24} {iso.kind:<9} {len(iso.groups):>3} group{'s' if len(iso.groups) != 1 else ''}, channels {sum(iso.channels)}")
        for g in iso.groups:
            members = ", ".join(f"{n}:{d}" for n, d in g.members[:4]) + (f" (+{len(g.members) - 4})" if len(g.members) > 4 else "")
            rows.append(f"    {g.root:<36} {g.channels:>5}  {members}")
    data = {"model": _models.resolve(args.model), "macs": macs, "params": params, "groups": [
        {"signature": iso.signature, "kind": iso.kind, "groups": [g.to_dict() for g in iso.groups]} for iso in groups
    ]}
    _emit("\n".join(rows), data, args.json)
    return 0


def _memory_detail(exc: RuntimeError) -> str:
    """What an out-of-memory error asked for: ``CUDA out of memory. Tried to allocate 2.00 GiB``,
    or the size a CPU allocation was refused (torch words it as an internal assertion)."""
    from ._memory import readable

    text = " ".join(str(exc).split())
    refused = re.search(r"tried to allocate (\d+) bytes", text)
    return f"the CPU could not give {readable(int(refused.group(1)))}" if refused else ". ".join(text.split(". ")[:2]).rstrip(".")


def main(argv=None) -> int:
    # warnings only: library chatter (timm's "Loading pretrained weights ...") would come before,
    # and blur, the one line an error gets; downloads still show their progress bars
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        with command_line():
            args = _parser().parse_args(argv)
            commands = {"prune": cmd_prune, "finetune": cmd_finetune, "ssl": cmd_ssl, "eval": cmd_eval, "inspect": cmd_inspect}
            return commands[args.command](args)
    except IsopruneError as err:
        print(f"isoprune: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # torch's out of memory (CUDA's, or a CPU allocation refused) is the user's to fix
        from ._memory import out_of_memory

        if not out_of_memory(exc):
            raise
        print(f"isoprune: error: out of memory ({_memory_detail(exc)}); lower --batch-size (or --latency-batch), give a smaller "
              "--input-size, or use a device with more memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("isoprune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``isoprune inspect ... | head``): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush does not raise again
        return 141


if __name__ == "__main__":
    sys.exit(main())
