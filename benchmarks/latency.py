"""Latency vs MACs: does a pruned model run as much faster as its MACs say?

    python benchmarks/latency.py --threads 1 --repeats 5 --modes eager channels_last compiled

Each model is pruned to its paper recipe's shape (DeiT-B -> 4.2 G, ConvNeXt-B -> 8.5 G,
ResNet-50 -> 2.0 G, MobileNetV2 -> 0.15 G) once per ``round_to`` (1, 2, 8, 16, 32), with l2
magnitude instead of the recipe's Taylor scores: latency depends on the widths, not the weights,
and these need no data. Random weights, eval mode, ``torch.inference_mode``.

For each batch size, the unpruned and the pruned models take turns: every round times each of
them once (a sample is as many forward passes as fill ``--sample-seconds``), so drift on a shared
machine hits all of them alike. Reported per model: the median time per forward and its spread
over rounds, the speedup over the unpruned model, the MACs reduction, and their ratio
(``efficiency``; the target is >= 0.85 at batch 32).

``--modes`` says how the models run, each mode timed on its own, every contender alike:
``eager`` (contiguous tensors, as a model comes), ``channels_last`` (weights and input in
channels-last memory format, the layout CPU convolution kernels prefer) and ``compiled``
(channels-last, ``torch.compile`` with inductor's freezing, which folds each BatchNorm into its
convolution and prepacks the weights: the deployment path torch recommends; one static graph
per model and batch size, checked against the eager output before it is timed; on a GPU replayed
as CUDA graphs).
``--scopes isomorphic local`` times the widths each ranking scope chooses side by side (local:
one ratio in every layer, as a width multiplier would), all against the same unpruned model.

On a GPU (``--device cuda``), ``--dtypes float16`` times the models in half precision, as they
are deployed there, cuDNN picking its fastest kernels (``cudnn.benchmark``).

Writes ``results/latency.csv``, ``latency.json`` (with the command) and ``latency.png``.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import _machine  # benchmarks/, beside this script
from isoprune._latency import DTYPES, sync

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "deit_b": "deit_b_4.2g.yaml",
    "convnext_b": "convnext_b_8.5g.yaml",
    "resnet50": "resnet50_2.0g.yaml",
    "mobilenetv2": "mobilenetv2_0.15g.yaml",
}
TARGET = 0.85
MODES = ("eager", "channels_last", "compiled")


def contenders(recipe_name: str, round_tos: list[int], scopes=("isomorphic",)) -> list[dict]:
    """The unpruned model and one pruned copy per scope and ``round_to``, each with its MACs."""
    import copy

    import timm

    import isoprune
    from isoprune import _models, _recipes

    recipe = _recipes.load_recipe(ROOT / "recipes" / RECIPES[recipe_name])
    p = recipe.prune
    torch.manual_seed(0)
    base = timm.create_model(_models.architecture(p.model)).eval()
    models = [{"name": "base", "round_to": None, "model": base, "macs": isoprune.count(base)[0]}]
    for scope in scopes:
        for r in round_tos:
            pruned = copy.deepcopy(base)
            isoprune.prune(pruned, dict(p.ratios), depth=dict(p.depth) or None, budget=p.target, round_to=r if r > 1 else None, scope=scope)
            models.append({"name": f"{scope} round_to={r}", "scope": scope, "round_to": r, "model": pruned, "macs": isoprune.count(pruned)[0]})
    return models


def _sample(model, x, iters: int, device) -> float:
    """Seconds per forward pass, over ``iters`` passes."""
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        model(x)
    sync(device)
    return (time.perf_counter() - start) / iters


def runner(model: torch.nn.Module, x: torch.Tensor, mode: str):
    """What times ``model`` in ``mode``: the module itself, or its compiled graph for ``x``'s
    shape, checked against the eager output."""
    if mode == "eager":
        return model.to(memory_format=torch.contiguous_format)
    model = model.to(memory_format=torch.channels_last)
    if mode == "channels_last":
        return model
    # on a GPU also CUDA graphs ("reduce-overhead"): the forward replays as one launch, which
    # matters where kernel launches, not arithmetic, set the time (small batches)
    compiled = torch.compile(model, dynamic=False, mode="reduce-overhead" if x.is_cuda else None)
    want = model(x).float()
    tol = 1e-3 if x.dtype == torch.float32 else 2e-2  # half precision: other kernels, other rounding
    torch.testing.assert_close(compiled(x).float(), want, rtol=tol, atol=tol * want.abs().max().item())
    return compiled


def time_all(models: list[dict], batch: int, repeats: int, sample_seconds: float, device, mode: str = "eager",
             dtype: torch.dtype = torch.float32) -> dict[str, list[float]]:
    """Per contender, ``repeats`` samples of seconds per forward, taken in alternating rounds."""
    x = torch.randn(batch, *models[0]["model"].pretrained_cfg["input_size"], device=device, dtype=dtype)
    if mode != "eager":
        x = x.to(memory_format=torch.channels_last)
    iters, run = {}, {}
    # compiling: every model and batch size its own static graph; a recompile limit hit is an
    # error, never a silent fall-back to eager
    with torch.inference_mode(), torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True), \
            torch._inductor.config.patch(freezing=True):
        for m in models:
            run[m["name"]] = runner(m["model"].to(device, dtype), x, mode)
            _sample(run[m["name"]], x, 1, device)  # warm-up
            iters[m["name"]] = max(1, round(sample_seconds / _sample(run[m["name"]], x, 1, device)))
        times = {m["name"]: [] for m in models}
        for _ in range(repeats):
            for m in models:
                times[m["name"]].append(_sample(run[m["name"]], x, iters[m["name"]], device))
    torch._dynamo.reset()  # drop the compiled graphs before the next mode or batch size
    return times


def rows_for(recipe_name: str, models: list[dict], times: dict, batch: int, device, mode: str = "eager", dtype: str = "float32") -> list[dict]:
    base_s, base_macs = statistics.median(times["base"]), models[0]["macs"]
    rows = []
    for m in models[1:]:
        s = times[m["name"]]
        speedup, reduction = base_s / statistics.median(s), base_macs / m["macs"]
        rows.append({
            "model": recipe_name, "scope": m["scope"], "mode": mode, "dtype": dtype, "device": str(device), "batch": batch, "round_to": m["round_to"],
            "macs_base_g": base_macs / 1e9, "macs_pruned_g": m["macs"] / 1e9,
            "ms_base": 1e3 * base_s, "ms_base_range": [1e3 * min(times["base"]), 1e3 * max(times["base"])],
            "ms_pruned": 1e3 * statistics.median(s), "ms_pruned_range": [1e3 * min(s), 1e3 * max(s)],
            "macs_reduction": reduction, "speedup": speedup, "efficiency": speedup / reduction,
        })
    return rows


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    modes = list(dict.fromkeys((r["mode"], r.get("dtype", "float32")) for r in rows))
    fig, axes = plt.subplots(len(modes), len(batches), figsize=(5.5 * len(batches), 4 * len(modes)), squeeze=False)
    for ((mode, dtype), batch), ax in zip([(mode, batch) for mode in modes for batch in batches], axes.flat):
        for model, scope in dict.fromkeys((r["model"], r["scope"]) for r in rows):
            mine = [r for r in rows if (r["model"], r["scope"], r["batch"], r["mode"], r.get("dtype", "float32")) == (model, scope, batch, mode, dtype)]
            ax.plot([r["round_to"] for r in mine], [r["efficiency"] for r in mine], "o-" if scope == "isomorphic" else "s--",
                    label=model if scope == "isomorphic" else f"{model} ({scope})")
        ax.axhline(TARGET, color="grey", ls="--", lw=1, label=f"target {TARGET}")
        ax.axhline(1.0, color="black", lw=0.5)
        ax.set(xscale="log", xlabel="round_to", ylabel="speedup / MACs reduction", title=f"{mode}{'' if dtype == 'float32' else ', ' + dtype}, batch {batch} ({rows[0]['device']})")
        ax.set_xticks([1, 2, 8, 16, 32], labels=["1", "2", "8", "16", "32"])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--round-to", nargs="+", type=int, default=[1, 2, 8, 16, 32])
    ap.add_argument("--scopes", nargs="+", default=["isomorphic"], choices=["isomorphic", "global", "local"],
                    help="how the pruned widths are chosen, each timed beside the others (local: one ratio in every layer, a width multiplier)")
    ap.add_argument("--modes", nargs="+", default=["eager"], choices=MODES, help="how the models run (see above)")
    ap.add_argument("--dtypes", nargs="+", default=["float32"], choices=list(DTYPES), help="precisions to run in (half ones on a GPU)")
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds per batch size")
    ap.add_argument("--sample-seconds", type=float, default=0.5, help="forward passes per sample fill this long")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    device = set_up(args)
    rows = []
    print(f"{'model':<12} {'scope':<10} {'mode':<22} {'batch':>5} {'round_to':>8} {'GMACs':>13} {'ms base':>9} {'ms pruned':>10} {'speedup':>8} {'MACs x':>7} {'eff':>5}")
    for done, name in enumerate(args.models, 1):
        models = contenders(name, args.round_to, args.scopes)
        for batch in args.batches:
            for mode, dtype in [(mode, dtype) for dtype in args.dtypes for mode in args.modes]:
                times = time_all(models, batch, args.repeats, args.sample_seconds, device, mode, DTYPES[dtype])
                found = rows_for(name, models, times, batch, device, mode, dtype)
                for r in found:
                    print(f"{name:<12} {r['scope']:<10} {mode + ('' if dtype == 'float32' else ' ' + dtype):<22} {batch:>5} {r['round_to']:>8} {r['macs_base_g']:>5.2f}->{r['macs_pruned_g']:<6.3f} "
                          f"{r['ms_base']:>9.1f} {r['ms_pruned']:>10.1f} {r['speedup']:>7.2f}x {r['macs_reduction']:>6.2f}x {r['efficiency']:>5.2f}", flush=True)
                rows += found
        save(rows, args.out, done == len(args.models), device, target=TARGET)  # after each model: a long run cut short keeps what it measured


def set_up(args) -> torch.device:
    """torch's CPU threads (``--threads``) and the device (``--device``), where cuDNN picks its
    fastest kernels."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def meta(name: str, device: torch.device) -> dict:
    """What ``benchmarks/NAME.py`` ran as and on: its command, torch, the threads, the CPU, the GPU."""
    about = {"command": " ".join(["python", f"benchmarks/{name}.py", *sys.argv[1:]]), "torch": torch.__version__,
             "threads": torch.get_num_threads(), "cpu": _machine.cpu()}
    if device.type == "cuda":
        about["gpu"] = torch.cuda.get_device_name(device)
    return about


def save(rows: list[dict], out: Path, done: bool, device: torch.device, name: str = "latency", plot=None, **extra) -> None:
    """``rows`` as ``NAME.csv``, ``NAME.json`` (with the command of ``benchmarks/NAME.py``, what it
    ran on, and ``extra``) and ``NAME.png``, drawn by ``plot`` (``draw``)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / f"{name}.json").write_text(json.dumps({**meta(name, device), "complete": done, **extra, "rows": rows}, indent=1))
    (plot or draw)(rows, out / f"{name}.png")
    print(f"saved {out}/{name}.csv, {name}.json, {name}.png" + ("" if done else " (so far)"), flush=True)


if __name__ == "__main__":
    main()
