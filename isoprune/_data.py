"""ImageFolder data with timm's transforms, for calibration, fine-tuning and evaluation.

Every data problem a user can cause (a missing split, no images, an unreadable file, classes that
do not match the model) becomes one ``IsopruneError`` naming the fix.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.datasets import ImageFolder

from ._errors import IsopruneError, setting
from ._trace import fixed_size
from ._trace import input_size as built_for


def data_config(model: nn.Module, input_size: int | None = None) -> dict:
    """timm's data config for the model's pretrained config (mean, std, interpolation, crop),
    at ``input_size`` squared when given, else at the size the model was built for."""
    import timm.data

    fixed = fixed_size(model)
    if input_size is not None and fixed not in (None, (input_size, input_size)):
        raise IsopruneError(f"{type(model).__name__} takes {fixed[0]}x{fixed[1]} inputs only, not {input_size}x{input_size}",
                            hint=f"drop {setting('input_size')} (or give {fixed[0]}): the model was built for that size")
    config = timm.data.resolve_data_config({}, model=model)
    channels, height, width = built_for(model)
    config["input_size"] = (channels, input_size, input_size) if input_size is not None else (channels, height, width)
    return config


def device(name: str, index: int = 0) -> torch.device:
    """``cpu`` or ``cuda`` (device ``index``), refusing CUDA where none is visible."""
    if name == "cuda" and not torch.cuda.is_available():
        raise IsopruneError(f"{setting('device', 'cuda')}, but no CUDA device is visible", hint=f"use {setting('device', 'cpu')}")
    return torch.device("cuda", index) if name == "cuda" else torch.device("cpu")


def splits(root: str | Path, *names: str) -> list[Path]:
    """``root/name`` for each split, all checked before any is read."""
    for name in names:
        if not (Path(root) / name).is_dir():
            raise IsopruneError(f"no {name}/ directory in {root}",
                                hint=f"{setting('data')} must hold {' and '.join(f'{n}/' for n in names)}, each an ImageFolder")
    return [Path(root) / name for name in names]


_scan: dict[tuple, list] = {}
"""The last folder's file list, by where it is and its class directories' times of change."""


class _Folder(ImageFolder):
    """torchvision's ImageFolder, whose list of (file, class) under a folder is kept from the last
    scan while neither the folder nor a class directory has changed (adding or removing a file
    changes its directory's time): ``isoprune prune --data --recalibrate-bn`` reads the
    calibration folder before and after pruning, and walking ImageNet's 1.28M training files
    takes many seconds. (Files in directories nested inside a class directory are not watched.)

    Given ``classes`` (the training folder's), its samples are labelled by their index among them:
    ImageFolder numbers a folder's own classes in order, so a validation folder that lacks one
    would label every class after it as the one before."""

    def __init__(self, root: str, transform=None, classes: list[str] | None = None):
        self.given = classes
        super().__init__(root, transform=transform, allow_empty=classes is not None)

    def find_classes(self, directory):
        found, class_to_idx = super().find_classes(directory)
        if self.given is None:
            return found, class_to_idx
        given = set(self.given)
        extra = [c for c in found if c not in given]
        if extra:
            raise IsopruneError(f"{directory} has classes the training data lacks: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}",
                                hint="give it only class folders train/ has, named alike")
        return list(self.given), {c: i for i, c in enumerate(self.given)}

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False) -> list:
        with os.scandir(directory) as entries:
            changed = sorted((e.name, e.stat().st_mtime_ns) for e in entries if e.is_dir())
        key = (os.path.realpath(directory), os.stat(directory).st_mtime_ns, tuple(changed), tuple(sorted(class_to_idx.items())),
               extensions, is_valid_file, allow_empty)
        if key not in _scan:
            samples = ImageFolder.make_dataset(directory, class_to_idx, extensions, is_valid_file, allow_empty)
            _scan.clear()
            _scan[key] = samples
        return list(_scan[key])


def _folder_hint() -> str:
    return f"{setting('data')} must be an ImageFolder: one sub-directory of images per class"


def data_dir(path: str | Path) -> Path:
    """``path``, which must be a directory (``_pipeline.run`` checks ``--data`` with it before it
    builds the model)."""
    path = Path(path)
    if not path.is_dir():
        raise IsopruneError(f"no data directory {path}", hint=_folder_hint())
    return path


def image_folder(path: str | Path, transform, classes: list[str] | None = None):
    """``path`` as a torchvision ImageFolder (its file list scanned once while it is unchanged),
    labelled by the index of its class among ``classes`` where given (the training folder's, for a
    validation folder that may lack some)."""
    path = data_dir(path)
    try:
        folder = _Folder(str(path), transform=transform, classes=classes)
    except (FileNotFoundError, RuntimeError) as exc:
        raise IsopruneError(f"no images in {path}: {exc}", hint=_folder_hint()) from exc
    if not len(folder):
        raise IsopruneError(f"no images in {path}", hint=_folder_hint())
    return folder


def class_names(path: str | Path) -> list[str]:
    """The classes of an ImageFolder at ``path``: its sub-directories, in order."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir())


def check_classes(dataset, model: nn.Module, where: str, hint: str | None = None) -> None:
    classes = getattr(model, "num_classes", None)
    if classes and len(dataset.classes) != classes:
        raise IsopruneError(
            f"{where} has {len(dataset.classes)} classes but the model predicts {classes}",
            hint=hint or f"pass {setting('num_classes', len(dataset.classes))} to give the model a new head for this data",
        )


def readable(loader):
    """Iterate a loader, turning an unreadable image deep inside it into one clear error."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (OSError, ValueError) as exc:
            raise IsopruneError(f"cannot read an image: {exc}", hint="remove or fix the file") from exc
        yield batch


def reset_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the classifier's output layer(s) with fresh ones for ``num_classes`` classes.

    timm's ``reset_classifier`` sizes the new head from attributes that pruning leaves stale
    (``num_features``), so the new layers take their input width from the old ones instead."""
    from ._arch import classifier_modules

    heads = {id(m) for m in classifier_modules(model)}
    replaced = 0
    for name, module in list(model.named_modules()):
        if id(module) not in heads or not isinstance(module, nn.Linear):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, nn.Linear(module.in_features, num_classes, bias=module.bias is not None))
        replaced += 1
    if not replaced:
        raise IsopruneError(f"cannot find a linear classifier in {type(model).__name__} to resize")
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    base = getattr(model, "isoprune_base", None)
    if base is not None:
        model.isoprune_base = {**base, "kwargs": {**base["kwargs"], "num_classes": num_classes}}
    return model


def seeded_loader(dataset, batch_size: int, *, shuffle: bool, seed: int, epoch: int = 0, rank: int = 0, world: int = 1,
                  workers: int = 0, drop_last: bool = False) -> torch.utils.data.DataLoader:
    """A loader whose order and worker seeds depend only on (seed, epoch, rank): a resumed run
    sees exactly the batches an uninterrupted one would. Under ``world`` > 1 each rank takes every
    ``world``-th sample of the same permutation, so the ranks' batches together are the
    single-process batch."""
    if shuffle:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 1009 + epoch)).tolist()
    else:
        order = list(range(len(dataset)))
    per_rank = batch_size // world
    if drop_last:
        order = order[: len(order) // batch_size * batch_size]
    subset = torch.utils.data.Subset(dataset, order[rank::world])
    generator = torch.Generator().manual_seed((seed * 1009 + epoch) * 131 + rank)
    return torch.utils.data.DataLoader(subset, batch_size=per_rank, shuffle=False, num_workers=workers,
                                       generator=generator, drop_last=drop_last, persistent_workers=False)
