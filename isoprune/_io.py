"""Saving and loading pruned models without pickle.

A pruned model is a directory: ``model.safetensors`` (tensors only) and ``isoprune.json`` (the
base architecture and its keyword arguments, the plan, sizes, versions; a model pruned again also
the plans before it). Loading rebuilds the base architecture without weights, applies the plans'
shapes in order, then loads the tensors strictly.
It also records the input size the weights were pruned or trained at, which a loaded model takes
as its own (``adopt_input_size``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from . import __version__
from ._apply import apply_plan
from ._errors import IsopruneError, on_command_line, setting
from ._plan import PruningPlan
from ._trace import input_size as built_for, unwrapped

WEIGHTS = "model.safetensors"
METADATA = "isoprune.json"
FORMAT = 1


def versions() -> dict[str, str]:
    found = {"isoprune": __version__}
    for package in ("torch", "timm", "torch-pruning", "safetensors"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found


def base_spec(model: nn.Module, base=None) -> dict:
    """How to rebuild the unpruned architecture: ``{"library", "name", "kwargs"}``. Models built
    by ``isoprune`` remember it; other timm models are read from their config, the name with its
    pretrained tag (``resnet50.tv_in1k``: the data config a loaded model gets is that tag's);
    ``base`` may be given as that dict or as ``"timm:NAME"`` / ``"torchvision:NAME"``."""
    if isinstance(base, str):
        library, _, name = base.rpartition(":")
        base = {"library": library or "timm", "name": name, "kwargs": {}}
    if base is None:
        base = getattr(model, "isoprune_base", None) or _timm_base(model) or _torchvision_base(model)
    if base is None:
        raise IsopruneError(
            f"cannot tell which architecture this {type(model).__name__} was built from",
            hint='pass base="timm:NAME" or base="torchvision:NAME"',
        )
    if base.get("library") not in ("timm", "torchvision"):
        raise IsopruneError(f"unknown model library {base.get('library')!r}", hint="use timm or torchvision")
    spec = {"library": base["library"], "name": base["name"], "kwargs": dict(base.get("kwargs", {}))}
    return {**spec, **{key: base[key] for key in ("source", "pretrained_cfg") if key in base}}


def _timm_base(model: nn.Module) -> dict | None:
    """The base of a model timm built, from its config; None for one timm did not build."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture")
    if arch is None:
        return None
    kwargs = {"num_classes": model.num_classes} if hasattr(model, "num_classes") else {}
    from ._models import SOURCES, sourced_base  # _models imports this module

    source = cfg.get("source")
    if source in SOURCES:  # timm built it from the Hub or a folder: its config has the rest
        return sourced_base(f"{source}:{cfg['hf_hub_id'] if source == 'hf-hub' else cfg['file']}", model, kwargs)
    return {"library": "timm", "name": _tagged(arch, cfg.get("tag")), "kwargs": kwargs}


def _torchvision_base(model: nn.Module) -> dict | None:
    """The torchvision builder of a pruned torchvision model: the one of its class whose layers have
    the widths the model had before its first plan, built on the meta device; None where there is
    no plan, or not one builder alone fits (torchvision models keep no name)."""
    earlier = getattr(model, "isoprune_earlier", None)
    first = earlier[0] if earlier else getattr(model, "isoprune_plan", None)
    if first is None or not type(model).__module__.startswith("torchvision.models"):
        return None
    import torch
    import torchvision

    from ._apply import _widths

    before = {name: list(w["before"]) for name, w in first.widths.items()}
    groups = _conv_groups(model)  # widths alone do not tell a ResNeXt from a wide ResNet
    classes = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)][-1:]  # a classifier keeps its outputs
    kwargs = {"num_classes": classes[0]} if classes and classes[0] != 1000 else {}
    found = []
    for name in torchvision.models.list_models(module=torchvision.models):
        builder = torchvision.models.get_model_builder(name)
        if builder.__annotations__.get("return") is not type(model):
            continue
        with torch.device("meta"):
            candidate = builder(weights=None, **kwargs)
        if _widths(candidate) == before and all(
            groups.get(n, g) == g for n, g in _conv_groups(candidate).items()
        ):
            found.append(name)
    return {"library": "torchvision", "name": found[0], "kwargs": kwargs} if len(found) == 1 else None


def _conv_groups(model: nn.Module) -> dict[str, int | str]:
    """Each convolution's groups, ``depthwise`` for one with a group per channel (which pruning
    keeps so, with fewer groups)."""
    return {name: "depthwise" if 1 < m.groups == m.in_channels == m.out_channels else m.groups
            for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}


def _tagged(arch: str, tag: str | None) -> str:
    """``arch.tag`` where timm knows that tag for the architecture, else ``arch``."""
    import timm

    try:
        timm.models.get_pretrained_cfg(f"{arch}.{tag}", allow_unregistered=False)
    except Exception:  # noqa: BLE001 - no tag, or one timm does not know (a config made by hand)
        return arch
    return f"{arch}.{tag}"


def _build(base: dict) -> nn.Module:
    try:
        if base["library"] == "torchvision":
            import torchvision

            return torchvision.models.get_model(base["name"], weights=None, **base["kwargs"])
        import timm

        model = timm.create_model(base["name"], pretrained=False, **base["kwargs"])
    except Exception as exc:
        raise IsopruneError(f"cannot rebuild base model {base['name']}: {exc}", hint="is the library version the one it was saved with?") from exc
    if base.get("pretrained_cfg"):  # a model from the Hub or a folder: its images are prepared as it was trained
        model.pretrained_cfg = {**model.pretrained_cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in base["pretrained_cfg"].items()}}
    return model


def check_writable(directory, overwrite: bool = False, names: tuple[str, str] = ("out", "force")) -> Path:
    """``directory``, unless it would overwrite anything without ``overwrite``; ``names`` are the
    caller's arguments for the two, which the hint names (``isoprune.save`` has its own)."""
    directory = Path(directory)
    where, replacing = ("out", "force") if on_command_line() else names
    if directory.exists() and not directory.is_dir():
        raise IsopruneError(f"{directory} exists and is not a directory", hint="choose another output path")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise IsopruneError(f"output directory {directory} is not empty",
                            hint=f"choose another {setting(where)}, or pass {setting(replacing, True)} to replace isoprune's files in it")
    return directory


def save(model: nn.Module, directory, *, plan: PruningPlan | None = None, base=None, overwrite: bool = False, extra: dict | None = None,
         input_size=None) -> Path:
    """Write the pruned model's weights (safetensors) and metadata into ``directory``.

    ``input_size`` (``[channels, height, width]``) is the size the weights are for, recorded for
    ``load``; by default the size the plan was traced at, else the model's own.
    Files are written to a temporary directory beside it and moved into place, so a failure leaves
    no half-written model; other files in ``directory`` are left alone. A compiled or data parallel
    model is saved as the model it wraps."""
    model = unwrapped(model)
    plan = plan or getattr(model, "isoprune_plan", None)
    if plan is None:
        raise IsopruneError("the model carries no pruning plan", hint="pass plan=, or prune it with isoprune.prune")
    directory = check_writable(directory, overwrite, ("directory", "overwrite"))
    metadata = {
        "format": FORMAT,
        "base": base_spec(model, base),
        "input_size": [int(s) for s in input_size or plan.input_size or built_for(model)],
        "macs": plan.macs,
        "params": plan.params,
        "versions": versions(),
        **(extra or {}),
        "plan": plan.to_dict(),
    }
    earlier = getattr(model, "isoprune_earlier", None)
    if earlier:
        metadata["earlier"] = [p.to_dict() for p in earlier]
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        safetensors.torch.save_model(model, str(staging / WEIGHTS), metadata={"format": "pt", "isoprune": __version__})
        (staging / METADATA).write_text(json.dumps(metadata, indent=1))
        directory.mkdir(exist_ok=True)
        for item in staging.iterdir():
            os.replace(item, directory / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def is_saved(path) -> bool:
    """Whether ``path`` is a directory ``save`` wrote."""
    return (Path(path) / METADATA).is_file()


def saved_directory(path) -> Path | None:
    """The directory ``save`` wrote that ``path`` is, or holds the file ``path``; else None."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent if path.is_file() else None
    return directory if directory is not None and is_saved(directory) else None


def refuse_weights(source, weights) -> None:
    """A directory isoprune wrote carries its own weights: ``weights`` given with it would be ignored."""
    if weights is not None and Path(source).is_dir():
        raise IsopruneError(f"weights are for a model given by name, not the directory {source}",
                            hint=f"a pruned directory carries its own weights: drop {setting('weights')}")


def read_metadata(directory) -> dict:
    path = Path(directory) / METADATA
    if not path.is_file():
        runs = [Path(directory) / kept for kept in ("best", "last") if is_saved(Path(directory) / kept)]
        if runs:  # a fine-tuning run's directory: its models are in it
            raise IsopruneError(f"{directory} is a training run, not a saved model", hint=f"give its model: {' or '.join(map(str, runs))}")
        holder = saved_directory(directory)
        if holder is not None:  # a file of the model saved there
            raise IsopruneError(f"{directory} is a file of the model saved in {holder}", hint="give that directory")
        raise IsopruneError(f"{directory} is not a saved isoprune model (no {METADATA})", hint="give a directory written by isoprune.save or isoprune prune --out")
    try:
        metadata = json.loads(path.read_text())
    except ValueError as exc:
        raise IsopruneError(f"cannot parse {path}: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise IsopruneError(f"{path} has format {metadata.get('format')!r}; this isoprune reads format {FORMAT}")
    return metadata


def load(path, *, allow_pickle: bool = False, build_kwargs: dict | None = None) -> nn.Module:
    """A saved pruned model, in eval mode, with its plan as ``model.isoprune_plan`` (and, pruned
    again, the plans before it as ``model.isoprune_earlier``).

    ``build_kwargs`` go to the base model's constructor on top of the saved ones (e.g. timm's
    ``drop_path_rate`` for training); they change no weight shape and are not recorded.

    ``path`` is a directory from ``save``. A legacy whole-model ``.pth``/``.pt`` pickle is read only
    with ``allow_pickle=True``: unpickling runs code from the file, so only do it for files you trust.
    """
    path = Path(path)
    if path.is_file() and path.suffix in (".pth", ".pt", ".pkl"):
        return _load_pickle(path, allow_pickle)
    metadata = read_metadata(path)
    pruning = PruningPlan.from_dict(metadata["plan"])
    base = metadata["base"]
    model = _build({**base, "kwargs": {**base["kwargs"], **(build_kwargs or {})}})
    for earlier in metadata.get("earlier", []):  # a model pruned again: the plans before, in order
        apply_plan(model, PruningPlan.from_dict(earlier))
    apply_plan(model, pruning)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise IsopruneError(f"{path} has no {WEIGHTS}", hint="the save was interrupted; save the model again")
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(weights), strict=False)
    except Exception as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])[:300]
        raise IsopruneError(f"cannot load {weights}: {detail}", hint="is the file complete, and saved from this model?") from exc
    if missing or unexpected:
        raise IsopruneError(
            f"{weights} does not fit the rebuilt model",
            missing=list(missing)[:3],
            unexpected=list(unexpected)[:3],
            hint="save and load with the same model library versions",
        )
    model.isoprune_base = metadata["base"]
    adopt_input_size(model, metadata)
    return model.eval()


def recorded_input_size(metadata: dict) -> tuple[int, int, int] | None:
    """The (channels, height, width) a saved model's weights are for; directories written before
    the size was recorded give their plan's."""
    size = metadata.get("input_size") or metadata.get("plan", {}).get("input_size")
    return tuple(int(s) for s in size) if size and len(size) == 3 else None


def saved_side(path) -> int | None:
    """The square input size a directory ``save`` wrote records for its weights, if any."""
    if not is_saved(path):
        return None
    size = recorded_input_size(read_metadata(path))
    return size[1] if size is not None and size[1] == size[2] else None


def unpruned(metadata: dict) -> bool:
    """Whether a saved model's plan removes nothing (a model trained whole)."""
    params = metadata.get("params") or {}
    return "before" in params and params["before"] == params.get("after")


def pruned_from(metadata: dict) -> str | None:
    """The saved model (an absolute directory) a saved model was pruned from, where it was pruned
    from one rather than from a timm model by name."""
    source = (metadata.get("config") or {}).get("model") or ""
    return source if Path(source).is_absolute() else None


def load_for_classes(path, num_classes: int | None) -> nn.Module:
    """``load``, refusing ``num_classes`` other than the model's own: a saved model is used with
    the head it was trained with (a new one would score chance)."""
    model = load(path)
    classes = getattr(model, "num_classes", None)
    if num_classes and classes is not None and classes != num_classes:
        raise IsopruneError(f"{path} predicts {classes} classes, and {setting('num_classes')} gives a saved model no new head",
                            hint=f"fine-tune it for them first: isoprune finetune {path} --data DIR --num-classes {num_classes}")
    return model


def adopt_input_size(model: nn.Module, metadata: dict) -> None:
    """Make the input size a saved model was pruned or trained at its own: the ``input_size`` of
    its pretrained config, which timm's data config, and so evaluation, fine-tuning and tracing,
    read when no size is given. A CNN pruned and fine-tuned at 32x32 is then evaluated at 32x32,
    not at the 224x224 its architecture's config says. A ViT that takes any size (DINO trains
    one with ``dynamic_img_size``) keeps it too, over the size its patch embedding names."""
    size = recorded_input_size(metadata)
    if size is not None:
        model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), "input_size": size}
        model.isoprune_input_size = size


def _load_pickle(path: Path, allow_pickle: bool) -> nn.Module:
    if not allow_pickle:
        raise IsopruneError(
            f"{path} is a pickled whole model: loading it runs code stored in the file",
            hint=f"pass {setting('allow_pickle', True)} only for a file you trust, then isoprune.save it",
        )
    warnings.warn(f"unpickling {path}: this runs code from the file", stacklevel=3)
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise IsopruneError(f"cannot unpickle {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise IsopruneError(f"{path} holds a {type(model).__name__}, not a model", hint=f"load weights with {setting('weights', 'PATH')} instead")
    return model.eval()
