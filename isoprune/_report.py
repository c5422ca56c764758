"""report.png: per-layer widths before and after, and importance per isomorphic group."""
from __future__ import annotations

from pathlib import Path

import torch

from ._plan import PruningPlan, before_after


def draw_report(pruning: PruningPlan, path: Path, scores: dict[int, torch.Tensor] | None = None) -> Path:
    """Top: every layer's output width before (light) and after (dark); layers removed in depth
    have no dark bar. Bottom: the distribution of normalised unit importance in each isomorphic
    group, kept units against removed ones (only when the scores are at hand, i.e. after planning)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if scores else 1
    fig, axes = plt.subplots(panels, 1, figsize=(14, 4.5 * panels), squeeze=False)
    _widths(axes[0][0], pruning)
    if scores:
        _importance(axes[1][0], pruning, scores)
    fig.suptitle(f"{pruning.model}: {before_after(pruning.macs, pruning.params)}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _widths(ax, pruning: PruningPlan) -> None:
    names = list(pruning.widths)
    before = [pruning.widths[n]["before"][1] for n in names]
    after = [(pruning.widths[n]["after"] or [0, 0])[1] for n in names]
    x = range(len(names))
    ax.bar(x, before, color="#c6dbef", label="before", width=1.0)
    ax.bar(x, after, color="#2171b5", label="after", width=1.0)
    ax.set_yscale("log")
    ax.set_ylim(bottom=1)
    ax.set_ylabel("output width (log)")
    ax.set_xlabel(f"layer (forward order, {len(names)} layers)")
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.legend(loc="upper left")
    if len(names) <= 40:
        ax.set_xticks(list(x), names, rotation=90, fontsize=6)


def _importance(ax, pruning: PruningPlan, scores) -> None:
    classes: dict[str, list] = {}
    for g in pruning.groups:
        if g.id in scores:
            classes.setdefault(g.signature, []).append(g)
    kept_data, removed_data, labels = [], [], []
    for signature, groups in classes.items():
        kept, removed = [], []
        for g in groups:
            s = scores[g.id].double()
            mask = torch.zeros(len(s), dtype=torch.bool)
            mask[g.keep] = True
            kept.append(s[mask])
            removed.append(s[~mask])
        kept_data.append(torch.cat(kept).clamp_min(1e-12).log10().numpy())
        removed_data.append(torch.cat(removed).clamp_min(1e-12).log10().numpy())
        labels.append(f"{signature}\n({len(groups)} group{'s' if len(groups) != 1 else ''})")
    positions = range(len(labels))
    ax.boxplot(kept_data, positions=[p - 0.2 for p in positions], widths=0.35, patch_artist=True,
               boxprops={"facecolor": "#2171b5"}, showfliers=False)
    nonempty = [(p + 0.2, d) for p, d in zip(positions, removed_data) if len(d)]
    if nonempty:
        ax.boxplot([d for _, d in nonempty], positions=[p for p, _ in nonempty], widths=0.35, patch_artist=True,
                   boxprops={"facecolor": "#fc9272"}, showfliers=False)
    ax.set_xticks(list(positions), labels, rotation=60, fontsize=6, ha="right")
    ax.set_ylabel("log10 importance (per group, mean 1)")
    ax.set_title("importance per isomorphic group: kept (blue) vs removed (red)")


def _save(fig, axes, path: Path, epochs: list[int] | None = None) -> Path:
    """Grid each plot and write the figure; given the ``epochs`` its x axes count, they are ticked
    at whole epochs only (a run of one epoch was ticked 0.96 ... 1.04)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        if epochs and len(epochs) <= 10:
            ax.set_xticks(epochs)
        elif epochs:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def draw_curves(history: list[dict], path: Path) -> Path:
    """curves.png: train and val loss (left), val top-1 and top-5 (right), against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(11, 4))
    loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    loss.set(xlabel="epoch", ylabel="loss", title="loss")
    loss.legend()
    acc.plot(epochs, [r["top1"] for r in history], "o-", label="top-1")
    acc.plot(epochs, [r["top5"] for r in history], "o-", label="top-5")
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
    acc.legend()
    return _save(fig, (loss, acc), path, epochs)


def draw_ssl_curves(history: list[dict], path: Path) -> Path:
    """curves.png of a self-supervised run: DINO loss (left) and k-NN top-1 where measured (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(11, 4))
    loss.plot(epochs, [r["train_loss"] for r in history], "o-")
    loss.set(xlabel="epoch", ylabel="DINO loss", title="loss")
    measured = [(r["epoch"], r["knn_top1"]) for r in history if "knn_top1" in r]
    if measured:
        acc.plot(*zip(*measured), "o-")
    else:  # no val/ in the data
        acc.set_xlim(loss.get_xlim())
        acc.text(0.5, 0.5, "not measured: the data has no val/", ha="center", va="center", transform=acc.transAxes, color="gray")
    acc.set(xlabel="epoch", ylabel="k-NN top-1 (%)", title="k-NN accuracy (teacher, unreduced)")
    return _save(fig, (loss, acc), path, epochs)
