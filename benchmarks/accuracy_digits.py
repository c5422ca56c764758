"""Ranking quality on real data: isomorphic vs global vs local ranking, l2 vs taylor vs random,
on small models trained on scikit-learn's handwritten digits.

    python benchmarks/accuracy_digits.py --seeds 0 1 2 --keep 0.9 0.7 0.5 --finetune-epochs 2

For each seed, a small ViT (``test_vit`` at 32x32, patch 4) and a small ResNet (``test_resnet``)
are trained from scratch on the digits ImageFolder (``benchmarks/data/make_digits.py``). Each is
then pruned to the same MACs budgets (``--keep``: fractions of the unpruned MACs) with every scope
and importance, its top-1 on the 360 validation digits measured right after pruning, after its
BatchNorm statistics are measured again (``isoprune.recalibrate_bn`` on the 8 batches of 64
training digits taylor calibrates on; the ResNet only, the ViT has none), and after a short
fine-tune of the pruned model (labels only, the same epochs, lr and seed for every contender).
Reported: mean and standard deviation over seeds, ``results/accuracy_digits.{csv,json,png}``.

This is the paper's central claim (rank within isomorphic groups) tested at a small scale; the
table says what it shows, whichever way it goes.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from isoprune._recalibrate import batch_norms

RESULTS = Path(__file__).parent / "results"
HERE = Path(__file__).parent
SCOPES = ("isomorphic", "global", "local")
IMPORTANCES = ("l2", "taylor", "random")
STAGES = (("pruned_top1", "right after pruning"), ("recalibrated_top1", "BatchNorm recalibrated"), ("finetuned_top1", "after a short fine-tune"))
MODELS = {
    # name -> (timm model, build kwargs, training settings)
    "vit": ("test_vit", {"img_size": 32, "patch_size": 4}, {"epochs": 20, "lr": 2e-3}),
    "resnet": ("test_resnet", {}, {"epochs": 12, "lr": 3e-3}),
}


def digits(root: Path) -> Path:
    out = root / "digits"
    if not (out / "val").is_dir():
        subprocess.run([sys.executable, HERE / "data" / "make_digits.py", "--out", out], check=True, capture_output=True)
    return out


def val_loader(model, data: Path):
    import timm.data

    from isoprune import _data

    dataset = _data.image_folder(data / "val", timm.data.create_transform(**_data.data_config(model, 32), is_training=False))
    return _data.seeded_loader(dataset, 120, shuffle=False, seed=0)


def top1(model, data: Path) -> float:
    from isoprune._finetune import evaluate

    return evaluate(model.eval(), val_loader(model, data), torch.device("cpu"))["top1"]


def train_base(kind: str, seed: int, data: Path, work: Path) -> Path:
    import isoprune

    name, kwargs, settings = MODELS[kind]
    if (work / f"{kind}{seed}_base" / "best").is_dir():
        return work / f"{kind}{seed}_base" / "best"  # trained by an earlier run with the same --work
    torch.manual_seed(seed)
    model = isoprune.create_model(name, "none", num_classes=10, **kwargs)
    isoprune.prune(model, 0.0, example_inputs=torch.randn(1, 3, 32, 32))  # an identity plan: a directory finetune reads
    isoprune.save(model, work / f"{kind}{seed}_init")
    isoprune.finetune(work / f"{kind}{seed}_init", data, work / f"{kind}{seed}_base", teacher="none", input_size=32,
                      batch_size=64, opt="adamw", weight_decay=0.01, warmup_epochs=1, augment=False, seed=seed, **settings)
    return work / f"{kind}{seed}_base" / "best"


def calibration(model, data: Path, seed: int):
    from isoprune import _pipeline

    return _pipeline.calibration_batches(data, model, 64, seed=seed, limit=8, input_size=32)


def recalibrated_top1(model, data: Path, seed: int) -> float | None:
    """Top-1 of a copy of ``model`` with its BatchNorm statistics measured again; None without BatchNorm."""
    import copy

    import isoprune

    if not batch_norms(model):
        return None
    model = copy.deepcopy(model)
    isoprune.recalibrate_bn(model, calibration(model, data, seed))
    return top1(model, data)


def prune_one(base: Path, data: Path, scope: str, importance: str, keep: float, seed: int):
    import isoprune

    model = isoprune.load(base)
    calib = calibration(model, data, seed) if importance == "taylor" else None
    # the classifier's input width is pruned like any other layer's; the budget is on MACs
    isoprune.prune(model, 0.5, importance=importance, scope=scope, calib=calib, budget=f"{keep:.0%}",
                   example_inputs=torch.randn(1, 3, 32, 32))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--keep", type=float, nargs="+", default=[0.9, 0.7, 0.5], help="MACs kept, as fractions of the unpruned model's")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--finetune-lr", type=float, default=5e-4)
    ap.add_argument("--work", help="keep trained models here (default: a temporary directory)")
    args = ap.parse_args()

    import isoprune

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = digits(work)
        rows = []
        for kind in args.models:
            for seed in args.seeds:
                base = train_base(kind, seed, data, work)
                unpruned = isoprune.load(base)
                base_top1, base_macs = top1(unpruned, data), isoprune.count(unpruned, torch.randn(1, 3, 32, 32))[0]
                print(f"{kind} seed {seed}: unpruned top-1 {base_top1:.2f}%, {base_macs / 1e6:.2f} M MACs", file=sys.stderr)
                for keep in args.keep:
                    for scope in SCOPES:
                        for importance in IMPORTANCES:
                            began = time.time()
                            model = prune_one(base, data, scope, importance, keep, seed)
                            macs = isoprune.count(model, torch.randn(1, 3, 32, 32))[0]
                            pruned_top1 = top1(model, data)
                            recal_top1 = recalibrated_top1(model, data, seed)
                            out = work / f"{kind}{seed}_{scope}_{importance}_{keep}"
                            isoprune.save(model, out / "pruned", overwrite=True)
                            tuned = isoprune.finetune(out / "pruned", data, out / "tuned", teacher="none", epochs=args.finetune_epochs,
                                                      lr=args.finetune_lr, batch_size=64, opt="adamw", weight_decay=0.01,
                                                      augment=False, seed=seed, input_size=32, force=True)
                            row = {"model": kind, "seed": seed, "keep": keep, "scope": scope, "importance": importance,
                                   "macs": macs, "macs_fraction": macs / base_macs, "unpruned_top1": base_top1,
                                   "pruned_top1": pruned_top1, "recalibrated_top1": recal_top1, "finetuned_top1": tuned["last"]["top1"],
                                   "seconds": time.time() - began}
                            rows.append(row)
                            print(f"  keep {keep:.2f} {scope:<10} {importance:<6} MACs {row['macs_fraction']:.3f}: "
                                  f"pruned {pruned_top1:6.2f}%  recalibrated {_number(recal_top1, unit='%')}  fine-tuned {row['finetuned_top1']:6.2f}%",
                                  file=sys.stderr)
    write(rows, args)


def _mean_std(values):
    if any(v is None for v in values):
        return None, None  # a stage the model has not (recalibration without BatchNorm)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _number(value, width: int = 6, unit: str = "") -> str:
    return "-".rjust(width + len(unit)) if value is None else f"{value:{width}.2f}{unit}"


def write(rows: list[dict], args) -> None:
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "accuracy_digits.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = []
    for kind in args.models:
        for keep in args.keep:
            for scope in SCOPES:
                for importance in IMPORTANCES:
                    mine = [r for r in rows if (r["model"], r["keep"], r["scope"], r["importance"]) == (kind, keep, scope, importance)]
                    entry = {"model": kind, "keep": keep, "scope": scope, "importance": importance, "seeds": len(mine),
                             "macs_fraction": statistics.fmean(r["macs_fraction"] for r in mine)}
                    for key, _ in STAGES:
                        entry[key], entry[key + "_std"] = _mean_std([r[key] for r in mine])
                    summary.append(entry)
    unpruned = {kind: _mean_std([r["unpruned_top1"] for r in rows if r["model"] == kind and r["scope"] == SCOPES[0]
                                 and r["importance"] == IMPORTANCES[0] and r["keep"] == args.keep[0]]) for kind in args.models}
    command = " ".join(["python benchmarks/accuracy_digits.py", *sys.argv[1:]])
    (RESULTS / "accuracy_digits.json").write_text(json.dumps({"command": command, "unpruned": unpruned, "summary": summary}, indent=1))
    print(f"\n{command}")
    for kind in args.models:
        print(f"\n{kind}: unpruned top-1 {unpruned[kind][0]:.2f} +- {unpruned[kind][1]:.2f}% over {len(args.seeds)} seeds")
        print(f"{'keep':>5} {'scope':<10} {'imp.':<6} {'MACs':>6} {'pruned top-1':>16} {'recalibrated':>16} {'fine-tuned top-1':>18}")
        for e in (e for e in summary if e["model"] == kind):
            cells = [f"{_number(e[key], 8)} +- {_number(e[key + '_std'], 5)}" for key, _ in STAGES]
            print(f"{e['keep']:>5.2f} {e['scope']:<10} {e['importance']:<6} {e['macs_fraction']:>6.3f} {' '.join(cells)}")
    draw(summary, unpruned, args.models, RESULTS / "accuracy_digits.png")


def draw(summary, unpruned, kinds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(STAGES), len(kinds), figsize=(5 * len(kinds), 10), squeeze=False)
    styles = {"l2": "-", "taylor": "--", "random": ":"}
    colours = {"isomorphic": "tab:red", "global": "tab:blue", "local": "tab:green"}
    for col, kind in enumerate(kinds):
        for row, (key, title) in enumerate(STAGES):
            ax = axes[row][col]
            ax.set_title(f"{kind}: top-1 {title}")
            if any(e[key] is None for e in summary if e["model"] == kind):
                ax.text(0.5, 0.5, "no BatchNorm", ha="center", va="center", transform=ax.transAxes)
                ax.set_axis_off()
                continue
            for scope in SCOPES:
                for importance in IMPORTANCES:
                    points = sorted((e["macs_fraction"], e[key], e[key + "_std"]) for e in summary
                                    if (e["model"], e["scope"], e["importance"]) == (kind, scope, importance))
                    x, y, err = zip(*points)
                    ax.errorbar(x, y, yerr=err, color=colours[scope], linestyle=styles[importance], marker="o", markersize=3,
                                capsize=2, label=f"{scope} / {importance}")
            ax.axhline(unpruned[kind][0], color="grey", linewidth=0.8, label="unpruned")
            ax.set_xlabel("MACs kept (fraction of unpruned)")
            ax.set_ylabel("top-1 (%)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
