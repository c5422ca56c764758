"""Does token reduction during training cost accuracy? A quality proxy on real data (the digits).

    python benchmarks/tokens_digits.py --seeds 0 1 2 --threads 2

Data: scikit-learn's 1797 handwritten digits as a 32x32 RGB ImageFolder
(``benchmarks/data/make_digits.py``: 1437 train / 360 val, stratified). Model: a 4-block ViT with
4x4-pixel patches (64 patch tokens + class token), width 64, 4 heads, random init per seed; token
reduction at its default blocks (1, 2, 3).

(a) Supervised: every step sees two augmented views (random shifts of up to 3 pixels) of the same
    64 images, stacked [A; B] as SimPrune needs; all methods train on the same batches. Trained
    with each method at ``--keep-rate`` (EViT also with a keep-rate warm-up over the first 10%;
    dynamic SimPrune with its learned gate and no set rate) and without, then evaluated unreduced
    on val (top-1). The share of patch tokens kept, measured in the last training step, is reported.
(b) DINO (``isoprune.pretrain``, two global views plus two local crops): with SimPrune at
    ``--keep-rate``, dynamic SimPrune, and without, on the same seeds; k-NN top-1 (k=20, the
    teacher's class token, unreduced) on val with train as the bank. Beside them: the same k-NN on
    the randomly initialised ViT and on raw pixels.

Reports mean +- std over seeds, whatever it shows. Writes ``results/tokens_digits.csv``,
``tokens_digits.json`` (with the command) and ``tokens_digits.png``.
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
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results"
HERE = Path(__file__).parent
VIT = dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, num_classes=10)
DINO = dict(batch_size=128, lr=2e-3, warmup_epochs=2, out_dim=1024, hidden_dim=256, bottleneck_dim=64, local_crops_number=2)


def load_digits(root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Both splits as normalised tensors, read once from the ImageFolder."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    splits = {}
    for split in ("train", "val"):
        ds = ImageFolder(str(root / split), transform=tf)
        images, labels = zip(*[ds[i] for i in range(len(ds))])
        splits[split] = (torch.stack(images), torch.tensor(labels))
    return splits


def shifted(images: torch.Tensor, generator: torch.Generator, most: int = 3) -> torch.Tensor:
    """Each image moved by its own random offset of up to ``most`` pixels (zero padding)."""
    padded = F.pad(images, [most] * 4)
    offsets = torch.randint(0, 2 * most + 1, (len(images), 2), generator=generator)
    size = images.shape[-1]
    return torch.stack([p[:, y:y + size, x:x + size] for p, (y, x) in zip(padded, offsets.tolist())])


def vit(seed: int):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", **VIT)


# label -> token reduction settings (keep rate aside); "none" trains unreduced
SUPERVISED = {"none": {"method": "none"}, "simprune": {"method": "simprune"}, "simprune dynamic": {"method": "simprune", "dynamic": True},
              "evit": {"method": "evit"}, "evit warmup 0.1": {"method": "evit", "warmup": 0.1}, "tome": {"method": "tome"}}


def supervised(settings: dict, keep: float, seed: int, data, epochs: int, lr: float, batch: int = 64) -> tuple[float, float]:
    """Top-1 (percent, unreduced) on val after training with the token ``settings`` at ``keep``,
    and the share of patch tokens the last step kept."""
    from isoprune import tokens

    model = vit(seed).train()
    pruner = tokens.apply(model, keep_rate=keep, **settings)
    images, labels = data["train"]
    optimizer = torch.optim.AdamW([*model.parameters(), *pruner.parameters()], lr=lr, weight_decay=0.05)
    steps = epochs * (len(images) // batch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            views = torch.cat([shifted(images[idx], generator), shifted(images[idx], generator)])
            pruner.progress = step / max(steps - 1, 1)
            loss = F.cross_entropy(model(views), labels[idx].repeat(2)) + pruner.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
    model.eval()
    val_images, val_labels = data["val"]
    with torch.no_grad():
        return 100.0 * (model(val_images).argmax(1) == val_labels).float().mean().item(), pruner.measured


def knn(features_train, labels_train, features_val, labels_val, k: int = 20, temperature: float = 0.07) -> float:
    from isoprune import _ssl

    class Identity(torch.nn.Module):
        def forward_features(self, x):
            return x

        def forward_head(self, x, pre_logits=False):
            return x

    bank, queries = [(features_train, labels_train)], [(features_val, labels_val)]
    return _ssl.knn_top1(Identity(), bank, queries, torch.device("cpu"), k=k, temperature=temperature)


def class_features(model, images: torch.Tensor) -> torch.Tensor:
    from isoprune import _ssl

    with torch.no_grad():
        return _ssl.class_features(model.eval(), images)


DINO_RUNS = (("none", "none", False), ("simprune", "simprune", False), ("simprune dynamic", "simprune", True))  # label, method, dynamic


def dino(method: str, keep: float, seed: int, root: Path, work: Path, epochs: int, dynamic: bool = False) -> tuple[float, float]:
    """Final k-NN top-1 of the DINO teacher pre-trained with ``method``, and the share of patch
    tokens kept in its last epoch."""
    import isoprune

    model = vit(seed)
    isoprune.prune(model, 0.0)
    model.isoprune_base = {"library": "timm", "name": "vit_tiny_patch16_224", "kwargs": VIT}
    source = isoprune.save(model, work / f"init-{seed}", overwrite=True)
    result = isoprune.pretrain(source, root, work / f"dino-{method}-{seed}", tokens=method, keep_rate=keep, epochs=epochs,
                               dynamic=dynamic, **DINO, seed=seed, force=True)
    return result["last"]["knn_top1"], result["last"]["kept"]


def summary(values) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "runs": list(values)}


def report(part: str, row: dict) -> None:
    rate = "learned" if "dynamic" in row["method"] else f"{row['keep_rate']:.2f}"
    print(f"{part:<10} {row['method']:<16} keep {rate:<7} (kept {row['kept']:.2f}): top-1 {row['mean']:.2f} +- {row['std']:.2f}  "
          f"{[round(v, 2) for v in row['runs']]}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--keep-rate", type=float, default=0.8)
    parser.add_argument("--epochs", type=int, default=25, help="supervised epochs")
    parser.add_argument("--lr", type=float, default=3e-3, help="supervised peak learning rate (one-cycle)")
    parser.add_argument("--dino-epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", metavar="METHOD",
                        help="run only these rows (labels as printed); the others are kept from results/tokens_digits.json")
    parser.add_argument("--parts", nargs="+", choices=("supervised", "dino"), default=["supervised", "dino"],
                        help="run only these parts; the others' rows are kept from results/tokens_digits.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.time()
    work = Path(tempfile.mkdtemp(prefix="tokens_digits_"))
    root = work / "digits"
    subprocess.run([sys.executable, HERE / "data" / "make_digits.py", "--out", root], check=True, capture_output=True)
    data = load_digits(root)
    rows = []
    partial = bool(args.only) or len(args.parts) < 2
    chosen = (lambda label: label in args.only) if args.only else (lambda label: True)
    for label, settings in SUPERVISED.items():
        if "supervised" not in args.parts or not chosen(label):
            continue
        keep = 1.0 if label == "none" else args.keep_rate
        runs, kept = zip(*[supervised(settings, keep, s, data, args.epochs, args.lr) for s in args.seeds])
        rows.append({"part": "supervised", "method": label, "keep_rate": keep, "kept": statistics.mean(kept), **summary(runs)})
        report("supervised", rows[-1])
    for label, method, dynamic in DINO_RUNS:
        if "dino" not in args.parts or not chosen(label):
            continue
        keep = 1.0 if method == "none" else args.keep_rate
        runs, kept = zip(*[dino(method, keep, s, root, work, args.dino_epochs, dynamic) for s in args.seeds])
        rows.append({"part": "dino_knn", "method": label, "keep_rate": keep, "kept": statistics.mean(kept), **summary(runs)})
        report("DINO k-NN", rows[-1])
    (xt, yt), (xv, yv) = data["train"], data["val"]
    random_init = [knn(class_features(vit(s), xt), yt, class_features(vit(s), xv), yv) for s in args.seeds]
    rows.append({"part": "dino_knn", "method": "random init", "keep_rate": None, **summary(random_init)})
    pixels = knn(xt.flatten(1), yt, xv.flatten(1), yv)
    rows.append({"part": "dino_knn", "method": "raw pixels", "keep_rate": None, **summary([pixels])})
    for row in rows[-2:]:
        print(f"k-NN baseline {row['method']:<11}: top-1 {row['mean']:.2f} +- {row['std']:.2f}")
    write(merged(rows) if partial else rows, args, time.time() - began, partial)
    return 0


def merged(rows: list[dict]) -> list[dict]:
    """``rows`` in place of their namesakes among the last results, in the table's order (the runs
    are deterministic per seed, so a row kept is the row a full run would give)."""
    new = {(r["part"], r["method"]): r for r in rows}
    old = {(r["part"], r["method"]): r for r in json.loads((RESULTS / "tokens_digits.json").read_text())["rows"]}
    order = [("supervised", label) for label in SUPERVISED] + [("dino_knn", run[0]) for run in DINO_RUNS]
    order += [("dino_knn", "random init"), ("dino_knn", "raw pixels")]
    return [new.get(key) or old[key] for key in order if key in new or key in old]


def write(rows: list[dict], args, seconds: float, partial: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "tokens_digits.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["part", "method", "keep_rate", "kept", "mean", "std", "runs"])
        writer.writeheader()
        writer.writerows([{**r, "runs": " ".join(f"{v:.2f}" for v in r["runs"])} for r in rows])
    command = "python benchmarks/tokens_digits.py " + " ".join(sys.argv[1:])
    earlier = json.loads((RESULTS / "tokens_digits.json").read_text()) if partial else {}
    commands = earlier.get("commands", [earlier["command"]] if "command" in earlier else []) + [command]  # the runs in the table
    meta = {"command": command, "commands": commands, "date": time.strftime("%Y-%m-%d"),
            "seconds": seconds, "torch": torch.__version__, "seeds": args.seeds, "vit": VIT, "rows": rows}
    (RESULTS / "tokens_digits.json").write_text(json.dumps(meta, indent=1))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, part, title in ((axes[0], "supervised", "supervised, evaluated unreduced"), (axes[1], "dino_knn", "DINO, k-NN on val")):
        chosen = [r for r in rows if r["part"] == part]
        ax.bar(range(len(chosen)), [r["mean"] for r in chosen], yerr=[r["std"] for r in chosen], capsize=4)
        ax.set_xticks(range(len(chosen)), [r["method"].replace(" ", "\n", 1) + (f"\nkept {r['kept']:.2f}" if "kept" in r else "")
                                           for r in chosen], fontsize=7)
        low = min(r["mean"] - r["std"] for r in chosen)
        ax.set(ylabel="top-1 (%)", title=f"{title} ({len(args.seeds)} seeds)", ylim=(max(0, low - 10), 100))
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(RESULTS / "tokens_digits.png", dpi=90)
    plt.close(fig)
    print(f"wrote {RESULTS / 'tokens_digits.csv'}, tokens_digits.json, tokens_digits.png ({seconds:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
