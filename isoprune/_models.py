"""Building base models by name, with pretrained, local or no weights."""
from __future__ import annotations

import difflib
import logging
import warnings
from pathlib import Path

import timm
import torch
from torch import nn

from ._errors import IsopruneError

log = logging.getLogger("isoprune")

ALIASES = {
    # The paper's base models, by the short names people use for them. DeiT means the distilled
    # variant (87.34M params for DeiT-B), as in the paper; ResNets carry torchvision's weights.
    "deit_base": "deit_base_distilled_patch16_224.fb_in1k",
    "deit_b": "deit_base_distilled_patch16_224.fb_in1k",
    "deit_small": "deit_small_distilled_patch16_224.fb_in1k",
    "deit_s": "deit_small_distilled_patch16_224.fb_in1k",
    "deit_tiny": "deit_tiny_distilled_patch16_224.fb_in1k",
    "deit_t": "deit_tiny_distilled_patch16_224.fb_in1k",
    "convnext_b": "convnext_base.fb_in1k",
    "convnext_s": "convnext_small.fb_in1k",
    "convnext_t": "convnext_tiny.fb_in1k",
    "resnet50_tv": "resnet50.tv_in1k",
    "resnet101_tv": "resnet101.tv_in1k",
    "resnet152_tv": "resnet152.tv_in1k",
    "mobilenetv2": "mobilenetv2_100.ra_in1k",
    "mobilenet_v2": "mobilenetv2_100.ra_in1k",
    "swin_base": "swin_base_patch4_window7_224.ms_in1k",
    "swin_b": "swin_base_patch4_window7_224.ms_in1k",
    "swin_tiny": "swin_tiny_patch4_window7_224.ms_in1k",
    "swin_t": "swin_tiny_patch4_window7_224.ms_in1k",
    "vit_base": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "vit_b": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
}


def resolve(name: str) -> str:
    """A timm model name (optionally with a pretrained tag) for a name or alias."""
    name = name.strip()
    if name in ALIASES:
        return ALIASES[name]
    if timm.is_model(name):
        return name
    if Path(name).is_dir():
        from ._io import is_saved, read_metadata  # _io imports this module

        if is_saved(name):
            raise IsopruneError(
                f"{name} is a model isoprune saved, not a model name",
                hint="give it as the PATH of eval, finetune or inspect, or as prune's --model",
            )
        read_metadata(name)  # a directory that is not a saved model: says what it is
    known = list(ALIASES) + timm.list_models()
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    raise IsopruneError(
        f"unknown model {name!r}",
        hint=f"did you mean {', '.join(close)}?" if close else "see timm.list_models() or isoprune's ALIASES",
    )


def architecture(name: str) -> str:
    """The architecture part of a timm name: ``resnet50.tv_in1k`` -> ``resnet50``."""
    return resolve(name).partition(".")[0]


def create(name: str, weights: str = "pretrained", *, input_size: int | None = None, new_head: bool = True, **kwargs) -> nn.Module:
    """A timm model in eval mode. ``weights``: ``pretrained`` (timm's download), ``none`` (random
    init), or the path of a local checkpoint. The model remembers how it was built, so that a
    pruned copy can be rebuilt from its saved plan. An architecture built for one input size (a
    ViT) is built for ``input_size`` squared where that is another (``sized_for``). With
    ``num_classes`` and ``new_head``, a checkpoint's classifier for other classes is left out."""
    full = resolve(name)
    if input_size is None and weights not in ("pretrained", "none"):
        from ._io import saved_side

        input_size = saved_side(weights)  # a directory isoprune wrote: the size its weights are for
    if input_size is not None:
        kwargs = {**kwargs, **sized_for(full, input_size, kwargs)}
    pretrained = weights == "pretrained"
    hub_log = logging.getLogger("huggingface_hub")
    hub_level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # offline, the hub logs each failed request; our error says it once
    try:
        model = timm.create_model(full, pretrained=pretrained, **kwargs)
    except IsopruneError:
        raise
    except Exception as exc:
        if pretrained:
            raise IsopruneError(
                f"could not get pretrained weights for {full}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                hint="offline? pass --weights PATH for a local checkpoint, or --weights none for random init",
            ) from exc
        raise IsopruneError(f"could not build {full}: {exc}", hint="check the model's keyword arguments") from exc
    finally:
        hub_log.setLevel(hub_level)
    if weights not in ("pretrained", "none"):
        load_weights(model, weights, new_head=new_head and "num_classes" in kwargs)
    # with its pretrained tag: a tag is other weights (the teacher `original` loads) and their data
    # config (resnet50.tv_in1k: bilinear, crop 0.875; resnet50's default a1_in1k: bicubic, 0.95)
    model.isoprune_base = {"library": "timm", "name": full, "kwargs": dict(kwargs)}
    return model.eval()


def sized_for(full: str, side: int, kwargs: dict) -> dict:
    """``{"img_size": side}`` where the architecture (built with ``kwargs``) takes one input size
    and it is not ``side`` squared (timm then resamples pretrained position embeddings); nothing
    where it takes any size. Built on the meta device, only to look."""
    from ._trace import fixed_size

    if "img_size" in kwargs:
        return {}
    try:
        with torch.device("meta"):
            fixed = fixed_size(timm.create_model(full, pretrained=False, **kwargs))
    except Exception:  # noqa: BLE001 - building it for real says what is wrong
        return {}
    if fixed is None or fixed == (side, side):
        return {}
    try:
        with torch.device("meta"):
            timm.create_model(full, pretrained=False, **kwargs, img_size=side)
    except Exception as exc:
        raise IsopruneError(f"{full} takes {fixed[0]}x{fixed[1]} inputs only, not {side}x{side}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                            hint=f"drop --input-size (or give {fixed[0]})") from exc
    return {"img_size": side}


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint: safetensors, or a torch file loaded weights-only (never
    unpickling code); ``model`` / ``state_dict`` / EMA wrappers and ``module.`` prefixes are handled."""
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"  # a directory isoprune wrote
    if not path.is_file():
        raise IsopruneError(f"no checkpoint at {path}", hint="give the path of a .safetensors or .pth file, or --weights none")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols before failing; the error says it
            warnings.simplefilter("ignore")
            state = timm.models.load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as exc:
        pickled = "Unsupported global" in str(exc)  # a whole pickled object, not a corrupt file
        raise IsopruneError(
            f"cannot read checkpoint {path}: " + ("it holds pickled objects, not just weights" if pickled else f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"),
            hint="save weights with model.state_dict() (torch.save or safetensors)" if pickled else "is the file complete, and a checkpoint?",
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise IsopruneError(f"checkpoint {path} holds no state dict of tensors")
    return state


def _misfits(own: dict, state: dict) -> tuple[list, list, list]:
    """Keys missing from ``state``, keys ``own`` lacks, and keys of other shapes."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    return missing, unexpected, [k for k in own if k in state and state[k].shape != own[k].shape]


def _resampled(model: nn.Module, state: dict, own: dict) -> dict | None:
    """``state`` through the timm model's own checkpoint filter, which resamples position
    embeddings to the size the model was built for (as timm does for pretrained weights): a ViT's
    224x224 checkpoint for one built for 32x32. None unless the result then fits exactly."""
    import sys

    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return None
    try:
        filtered = filter_fn(dict(state), model)
    except Exception:  # noqa: BLE001 - a filter that cannot read it: the misfit is reported as it was
        return None
    return filtered if not any(_misfits(own, filtered)) else None


def _classifiers(names) -> tuple[str, ...]:
    """The module names of a timm config's ``classifier``: one name, or several (DeiT's two heads)."""
    return (names,) if isinstance(names, str) else tuple(names or ())


def head_classes(name: str, weights: str) -> int | None:
    """How many classes the classifier of ``weights`` (``pretrained``: timm's, or a checkpoint)
    for the timm architecture ``name`` predicts; None where that cannot be told."""
    cfg = timm.models.get_pretrained_cfg(resolve(name))
    if cfg is None or weights == "none":
        return None
    if weights == "pretrained":
        return cfg.num_classes
    names, state = _classifiers(cfg.classifier), read_state_dict(weights)
    return next((int(state[f"{n}.weight"].shape[0]) for n in names if f"{n}.weight" in state), None)


def _new_head(model: nn.Module, state: dict, own: dict, path) -> dict:
    """``state`` with the classifier the model was given for another number of classes in place
    of the checkpoint's, as timm leaves out a pretrained head for ``num_classes``."""
    names = _classifiers((getattr(model, "pretrained_cfg", None) or {}).get("classifier"))
    keys = [k for k in own if k.rpartition(".")[0] in names and k in state and state[k].shape != own[k].shape]
    if keys:
        log.warning("left out the classifier of %s (%s): the model has a new head for %s classes", path,
                    ", ".join(f"{k} {tuple(state[k].shape)}" for k in keys), getattr(model, "num_classes", "its"))
    return {**state, **{k: own[k] for k in keys}}


def load_weights(model: nn.Module, path, *, new_head: bool = False) -> None:
    """Load a checkpoint strictly (position embeddings resampled where the model was built for
    another input size; with ``new_head``, a classifier for another number of classes left out,
    the model's new one kept), or say which keys and shapes do not fit."""
    state = read_state_dict(path)
    own = model.state_dict()
    if new_head:
        state = _new_head(model, state, own, path)
    missing, unexpected, shapes = _misfits(own, state)
    resampled = _resampled(model, state, own) if shapes and not (missing or unexpected) else None
    if resampled is not None:
        log.warning("resampled %s of %s to the input size the model is built for", ", ".join(shapes), path)
        state, shapes = resampled, []
    if missing or unexpected or shapes:
        first = (shapes or missing or unexpected)[0]
        detail = f"{first}: {tuple(state[first].shape)} vs {tuple(own[first].shape)}" if shapes else first
        raise IsopruneError(
            f"checkpoint {path} does not fit {type(model).__name__}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(shapes)} mis-shaped keys (first: {detail})",
            hint="is it a checkpoint of this architecture and number of classes (--num-classes)?",
        )
    model.load_state_dict(state)
    if (Path(path) / "isoprune.json").is_file():  # a directory isoprune wrote: its weights are for the size it records
        from ._io import adopt_input_size, read_metadata

        adopt_input_size(model, read_metadata(path))
