"""``isoprune eval``: accuracy, size and speed of a pruned (or any timm) model."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn

from . import _data, _io, _models, _recipes, _trace
from ._errors import IsopruneError, setting
from ._finetune import evaluate
from ._latency import cast as cast_to, sync


def load_model(source: str | Path, weights: str = "pretrained", num_classes: int | None = None, input_size: int | None = None) -> nn.Module:
    """A directory isoprune wrote, or a timm model name (``weights``: pretrained, none, PATH;
    built for ``input_size`` where it takes one size only)."""
    if Path(source).is_dir():
        return _io.load_for_classes(source, num_classes)
    kwargs = {"num_classes": num_classes} if num_classes else {}
    return _models.create(str(source), weights, input_size=input_size, new_head=False, **kwargs)  # a new head scores chance


def latency(model: nn.Module, input_size: tuple[int, int, int], batch_size: int, device: torch.device,
            warmup: int = 5, iters: int = 20, dtype: torch.dtype = torch.float32,
            memory_format: torch.memory_format = torch.contiguous_format) -> dict:
    """Median wall time of a forward pass at ``batch_size`` after ``warmup`` passes, and the
    throughput it implies; the spread is the interquartile range over ``iters`` timed passes.
    The model and its input are cast to ``dtype`` and ``memory_format`` first."""
    if iters < 1:
        raise IsopruneError("latency needs at least one timed pass", hint=f"pass {setting('iters', 1)} or more")
    model.eval().to(device, dtype, memory_format=memory_format)
    x = torch.randn(batch_size, *input_size, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            sync(device)
            began = time.perf_counter()
            model(x)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - began)
    median = statistics.median(times)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [median, median, median]
    return {"batch_size": batch_size, "latency_ms": 1000 * median, "latency_iqr_ms": 1000 * (quartiles[2] - quartiles[0]),
            "throughput": batch_size / median, "device": str(device), "iters": iters, "warmup": warmup}


def run(source: str | Path, data: str | Path | None = None, *, weights: str | None = None, num_classes: int | None = None,
        input_size: int | None = None, batch_size: int = 64, device: str = "cpu", workers: int = 0,
        warmup: int = 5, iters: int = 20, dtype: str = "float32", channels_last: bool = False) -> dict:
    """Everything ``isoprune eval`` reports: accuracy on ``data`` (its ``val/`` when present),
    MACs, params and latency at ``batch_size``; all with the weights and inputs in ``dtype``
    (``float16`` or ``bfloat16``, as a model is deployed on a GPU), channels-last if asked.
    ``weights`` are for a model given by name (default: pretrained); a directory has its own."""
    import timm.data

    for name, value in (("num_classes", num_classes), ("input_size", input_size)):  # None: the model's own
        if value is not None:
            _recipes.check_whole(name, value)
    for name, value, limit in (("batch_size", batch_size, _recipes.COUNT), ("workers", workers, _recipes.NONNEGATIVE),
                               ("warmup", warmup, _recipes.NONNEGATIVE), ("iters", iters, _recipes.COUNT)):
        _recipes.check_whole(name, value, limit)
    _io.refuse_weights(source, weights)
    cast = cast_to(dtype, channels_last)
    where = _data.device(device)
    model = load_model(source, weights or "pretrained", num_classes, input_size)
    config = _data.data_config(model, input_size)
    result = {"model": str(source)}
    # counted in the precision the model was saved in, before it is cast
    macs, params = _trace.count(_trace.meta_skeleton(model), _trace.meta_inputs(model, size=config["input_size"]))
    if data is not None:
        root = Path(data) / "val" if (Path(data) / "val").is_dir() else Path(data)
        train = Path(data) / "train"
        classes = _data.class_names(train) if root != Path(data) and train.is_dir() else None  # val/ labelled as train/ labels them
        dataset = _data.image_folder(root, timm.data.create_transform(**config, is_training=False), classes)
        # a new head would score chance: a saved model is judged with its own
        _data.check_classes(dataset, model, str(root), hint=None if not Path(source).is_dir() else
                            f"evaluate it on data with its classes, or fine-tune it on this data first: "
                            f"isoprune finetune {source} --data {data} --num-classes {len(dataset.classes)}")
        loader = _data.seeded_loader(dataset, batch_size, shuffle=False, seed=0, workers=workers)
        result.update(evaluate(model.to(where, **cast), loader, where, **cast))
    result.update(macs=macs, params=params, input_size=list(config["input_size"]))
    result.update(latency(model, tuple(config["input_size"]), batch_size, where, warmup, iters, **cast))
    result.update(dtype=dtype, channels_last=channels_last)
    return result
