"""Building base models by name, with pretrained, local or no weights."""
from __future__ import annotations

import contextlib
import difflib
import logging
import warnings
from pathlib import Path

import timm
import torch
from torch import nn

from ._errors import IsopruneError, UnreachableError, first_line, on_command_line, setting

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


_FOLDER_HINT = "a local-dir: folder holds a timm model's config.json and its weights, as timm's save_for_hf or huggingface-cli download write them"

SOURCES = ("hf-hub", "local-dir")
"""timm's model sources beside its registry: a Hugging Face Hub repo, a folder of one."""

DATA_CONFIG = ("mean", "std", "interpolation", "crop_pct", "crop_mode")
"""The pretrained config's keys that say how the model's images are prepared."""


def source_of(name: str) -> tuple[str | None, str]:
    """timm's reading of a model name: (``hf-hub`` or ``local-dir``, the Hub repo or the folder),
    or (None, the name) for a model of timm's registry."""
    if ":" not in name:
        return None, name
    try:
        return timm.models.parse_model_name(name)
    except ValueError as exc:
        raise IsopruneError(str(exc).strip().partition("\n")[0].rstrip(".") or f"cannot read model name {name!r}", hint="write hf-hub:OWNER/REPO for a Hugging Face Hub model, local-dir:PATH for a folder of one") from exc


def resolve(name: str) -> str:
    """A timm model name (optionally with a pretrained tag) for a name or alias; a Hub repo
    (``hf-hub:timm/vit_base_patch16_224.augreg_in21k``) or a local folder of one
    (``local-dir:PATH``, made absolute) as timm reads them."""
    name = name.strip()
    if name in ALIASES:
        return ALIASES[name]
    source, where = source_of(name)
    if source == "local-dir":
        folder = Path(where).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise IsopruneError(f"no timm model folder at {where} (no config.json in it)", hint=_FOLDER_HINT)
        return f"local-dir:{folder}"
    if source is not None:
        return f"{source}:{where}"
    if timm.is_model(name):
        return name
    if Path(name).is_dir():
        from ._io import is_saved, read_metadata  # _io imports this module

        if is_saved(name):
            raise IsopruneError(
                f"{name} is a model isoprune saved, not a model name",
                hint="give it as the PATH of eval, finetune or inspect, or as prune's --model" if on_command_line() else "load it with isoprune.load",
            )
        if (Path(name) / "config.json").is_file():
            raise IsopruneError(f"{name} is the folder of a timm model, not a model name", hint=f"give it as local-dir:{name}")
        read_metadata(name)  # a directory that is not a saved model: says what it is
    known = list(ALIASES) + timm.list_models()
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    guess = f"did you mean {', '.join(close)}?" if close else ""
    if "/" in name:  # a path, or a Hub repo as the Hub's pages write it: timm/vit_base_patch16_224.augreg_in21k
        repo = name.count("/") == 1 and not name.startswith((".", "/", "~"))
        where = f"a Hugging Face Hub repo? give it as hf-hub:{name}" if repo else "check the path (local-dir:PATH for the folder of a timm model)"
        raise IsopruneError(f"no model or directory {name!r}", hint=f"{where}; or {guess}" if guess else where)
    raise IsopruneError(f"unknown model {name!r}", hint=guess or "see timm.list_models() or isoprune's ALIASES")


def is_name(name: str) -> bool:
    """Whether ``resolve`` takes ``name``: a model name, alias, Hub repo or folder of one."""
    try:
        resolve(name)
    except IsopruneError:
        return False
    return True


def architecture(name: str) -> str:
    """The architecture part of a timm name: ``resnet50.tv_in1k`` -> ``resnet50``; of a Hub repo
    or a local folder, the one its config names."""
    full = resolve(name)
    return source_config(full)[0] if source_of(full)[0] else full.partition(".")[0]


@contextlib.contextmanager
def _quiet_hub():
    """The Hugging Face Hub's own log held to errors: offline, it logs each failed request and
    retry, where our error says it once."""
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_log.setLevel(level)


def _first_sentence(exc: Exception) -> str:
    """``Type: what went wrong``, to the end of the first sentence: the Hub's errors run on for several."""
    return first_line(exc).partition(". ")[0].rstrip(".")[:200]


_configs: dict[str, tuple[str, dict, dict]] = {}


def source_config(name: str) -> tuple[str, dict, dict]:
    """The architecture, model arguments and pretrained config of an ``hf-hub:`` or
    ``local-dir:`` model, from its ``config.json`` (from the Hub, or the Hugging Face cache when
    offline with ``HF_HUB_OFFLINE=1``); read once a process."""
    full = resolve(name)
    if full not in _configs:
        source, where = source_of(full)
        try:
            with _quiet_hub():
                if source == "hf-hub":
                    cfg, arch, args = timm.models.load_model_config_from_hf(where)
                else:
                    from timm.models._hub import load_model_config_from_path  # what timm reads a local-dir: with

                    cfg, arch, args = load_model_config_from_path(where)
        except Exception as exc:
            hint = _FOLDER_HINT
            if source == "hf-hub":
                from huggingface_hub import constants

                fetch = f"download it where there is a network (huggingface-cli download {where} --local-dir DIR) and give local-dir:DIR"
                hint = (f"HF_HUB_OFFLINE is set and it is not in the Hugging Face cache: {fetch}" if constants.HF_HUB_OFFLINE
                        else f"offline? {fetch}, or set HF_HUB_OFFLINE=1 with it in the Hugging Face cache")
            raise UnreachableError(f"cannot read the config of {full}: {_first_sentence(exc)}", what="config", hint=hint) from exc
        _configs[full] = (arch, dict(args or {}), dict(cfg))
    return _configs[full]


def sourced_base(full: str, model: nn.Module, kwargs: dict) -> dict:
    """``isoprune_base`` of a model from the Hub or a local folder: its architecture, built with
    the model arguments and classes of its config (a fine-tune's head), the data config it was
    trained with (``pretrained_cfg``, which a loaded copy takes on), and where it came from
    (``source``: the teacher ``original`` loads its weights from there)."""
    full = resolve(full)
    arch, args, cfg = source_config(full)
    kwargs = {**args, **kwargs}
    if cfg.get("num_classes") is not None:
        kwargs.setdefault("num_classes", cfg["num_classes"])
    own = getattr(model, "pretrained_cfg", None) or {}
    data = {key: list(own[key]) if isinstance(own[key], tuple) else own[key] for key in DATA_CONFIG if key in own}
    return {"library": "timm", "name": arch, "kwargs": kwargs, "source": full, "pretrained_cfg": data}


def create(name: str, weights: str = "pretrained", *, input_size: int | None = None, new_head: bool = True, **kwargs) -> nn.Module:
    """A timm model in eval mode. ``weights``: ``pretrained`` (timm's download), ``none`` (random
    init), or the path of a local checkpoint. The model remembers how it was built, so that a
    pruned copy can be rebuilt from its saved plan. An architecture built for one input size (a
    ViT) is built for ``input_size`` squared where that is another (``sized_for``). With
    ``num_classes`` and ``new_head``, a checkpoint's classifier for other classes is left out."""
    full = resolve(name)
    sourced = source_of(full)[0] is not None
    if sourced:
        source_config(full)  # a config that cannot be read says so here, in its own words
    if input_size is None and weights not in ("pretrained", "none"):
        from ._io import saved_side

        input_size = saved_side(weights)  # a directory isoprune wrote: the size its weights are for
    if input_size is not None:
        kwargs = {**kwargs, **sized_for(full, input_size, kwargs)}
    pretrained = weights == "pretrained"
    try:
        with _quiet_hub():
            model = timm.create_model(full, pretrained=pretrained, **kwargs)
    except IsopruneError:
        raise
    except Exception as exc:
        if pretrained:
            raise UnreachableError(
                f"could not get pretrained weights for {full}: {_first_sentence(exc)}", what="weights",
                hint=f"offline? pass {setting('weights', 'PATH')} for a local checkpoint, or {setting('weights', 'none')} for random init",
            ) from exc
        raise IsopruneError(f"could not build {full}: {exc}", hint="check the model's keyword arguments") from exc
    if weights not in ("pretrained", "none"):
        load_weights(model, weights, new_head=new_head and "num_classes" in kwargs)
    # with its pretrained tag: a tag is other weights (the teacher `original` loads) and their data
    # config (resnet50.tv_in1k: bilinear, crop 0.875; resnet50's default a1_in1k: bicubic, 0.95)
    model.isoprune_base = sourced_base(full, model, kwargs) if sourced else {"library": "timm", "name": full, "kwargs": dict(kwargs)}
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
        raise IsopruneError(f"{full} takes {fixed[0]}x{fixed[1]} inputs only, not {side}x{side}: {first_line(exc, 160)}",
                            hint=f"drop {setting('input_size')} (or give {fixed[0]})") from exc
    return {"img_size": side}


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint: safetensors, or a torch file loaded weights-only (never
    unpickling code); ``model`` / ``state_dict`` / EMA wrappers and ``module.`` prefixes are handled."""
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"  # a directory isoprune wrote
    if not path.is_file():
        raise IsopruneError(f"no checkpoint at {path}", hint=f"give the path of a .safetensors or .pth file, or {setting('weights', 'none')}")
    if path.stat().st_size == 0:
        raise IsopruneError(f"checkpoint {path} is empty", hint="was it written to the end? give a complete .safetensors or .pth file")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols before failing; the error says it
            warnings.simplefilter("ignore")
            state = timm.models.load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as exc:
        pickled = "Unsupported global" in str(exc)  # a whole pickled object, not a corrupt file
        raise IsopruneError(
            f"cannot read checkpoint {path}: " + ("it holds pickled objects, not just weights" if pickled else first_line(exc, 160)),
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
    if weights == "none":
        return None
    full = resolve(name)
    if source_of(full)[0]:
        _, args, cfg = source_config(full)
        classes, classifier = args.get("num_classes", cfg.get("num_classes")), cfg.get("classifier")
    else:
        cfg = timm.models.get_pretrained_cfg(full)
        if cfg is None:
            return None
        classes, classifier = cfg.num_classes, cfg.classifier
    if weights == "pretrained":
        return classes
    names, state = _classifiers(classifier), read_state_dict(weights)
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


def _pruned_directory(path) -> Path | None:
    """The directory isoprune saved a pruned model in, where ``path`` is it or its weights file."""
    from ._io import read_metadata, saved_directory, unpruned

    directory = saved_directory(path)
    return directory if directory is not None and not unpruned(read_metadata(directory)) else None


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
        pruned = _pruned_directory(path)
        if pruned is not None:  # its weights fit only the pruned model that directory rebuilds
            raise IsopruneError(f"{path} holds a model isoprune pruned, not the full widths of {type(model).__name__}",
                                hint=f"give its directory as the model ({f'--model {pruned}' if on_command_line() else f'isoprune.load({str(pruned)!r})'})")
        first = (shapes or missing or unexpected)[0]
        detail = f"{first}: {tuple(state[first].shape)} vs {tuple(own[first].shape)}" if shapes else first
        raise IsopruneError(
            f"checkpoint {path} does not fit {type(model).__name__}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(shapes)} mis-shaped keys (first: {detail})",
            hint=f"is it a checkpoint of this architecture and number of classes ({setting('num_classes')})?",
        )
    model.load_state_dict(state)
    from ._io import adopt_input_size, read_metadata, saved_directory

    saved = saved_directory(path)
    if saved is not None:  # a model isoprune wrote (its directory, or the weights file in it): its weights are for the size it records
        adopt_input_size(model, read_metadata(saved))
