"""How close to a MACs budget does the search land, where rounding makes the widths step?

    python benchmarks/budget_steps.py

A budget (``--target 0.15G``, ``budget=``) scales a recipe's ratio shape by one factor, found by
bisection. Rounded widths move in steps, and at some factors many move at once: at ratio 0.5,
every width that is a multiple of 16 halves to a multiple of 8, so with ``round_to=8``
MobileNetV2's stem, head and residual widths all step together, 9% of its MACs. A budget inside
such a step is out of reach of the factor alone; the search then fills in, one isomorphic group
at a time, the widths of the next larger shape (``isoprune._plan._fill``).

For each recipe's ratio shape (l2, randomly initialised, 1000 classes), each ``--round-to`` and
each budget (``--fractions`` of the unpruned model's MACs), the search runs once. Recorded are
where the bisection alone stopped and where the search landed (``plan.search``: ``bisected``,
``after``), as fractions of the budget (1.0: on it; the search stops within 1% under it). Nothing
is timed: MACs are counted on the weightless copy, so the figures do not depend on the machine.

Writes ``results/budget_steps/budget_steps.csv``, ``budget_steps.json`` (with the command) and
``budget_steps.png``.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from latency import RECIPES, ROOT, save  # benchmarks/, beside this script

RESULTS = Path(__file__).parent / "results" / "budget_steps"
TOLERANCE = 0.01


def landings(recipe_name: str, round_to: list[int], fractions: list[float]) -> list[dict]:
    """One row per (round_to, fraction): the budget, where the bisection stopped and where the
    search landed."""
    import timm

    import isoprune
    from isoprune import _models, _recipes

    p = _recipes.load_recipe(ROOT / "recipes" / RECIPES[recipe_name]).prune
    torch.manual_seed(0)
    model = timm.create_model(_models.architecture(p.model)).eval()
    macs = isoprune.count(model)[0]
    rows = []
    for r in round_to:
        for f in fractions:
            search = isoprune.plan(model, dict(p.ratios), budget=f"{f * macs / 1e9:.6f}G", round_to=r).search
            budget = search["budget"]
            rows.append({"model": recipe_name, "round_to": r, "fraction": f, "macs_base_g": macs / 1e9, "budget_g": budget / 1e9,
                         "bisected": search["bisected"] / budget, "landed": search["after"] / budget,
                         "filled": len(search["filled"]), "evaluations": search["evaluations"]})
    return rows


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.8), squeeze=False, sharey=True)
    for model, ax in zip(models, axes.flat):
        for n, r in enumerate(sorted({r["round_to"] for r in rows})):
            mine = [row for row in rows if row["model"] == model and row["round_to"] == r]
            x = [row["fraction"] for row in mine]
            line, = ax.plot(x, [row["landed"] for row in mine], "o-", label=f"round_to {r}")
            ax.plot(x, [row["bisected"] for row in mine], "x:", color=line.get_color(), label="bisection alone" if n == 0 else None)
        ax.axhline(1 - TOLERANCE, color="grey", ls="--", lw=1)
        ax.set(title=model, xlabel="budget / unpruned MACs", ylabel="pruned MACs / budget")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--round-to", nargs="+", type=int, default=[2, 8, 16])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6],
                    help="budgets, as fractions of the unpruned model's MACs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rows = []
    print(f"{'model':<12} {'round_to':>8} | {'bisection alone: worst, median, > 1% under':>44} | {'search: worst, median, > 1% under':>36}")
    for done, name in enumerate(args.models, 1):
        mine = landings(name, args.round_to, args.fractions)
        for r in args.round_to:
            got = [row for row in mine if row["round_to"] == r]
            cells = []
            for key in ("bisected", "landed"):
                values = [row[key] for row in got]
                short = sum(v < 1 - TOLERANCE for v in values)
                cells.append(f"{min(values):.3f}, {statistics.median(values):.3f}, {short}/{len(values)}")
            print(f"{name:<12} {r:>8} | {cells[0]:>44} | {cells[1]:>36}", flush=True)
        rows += mine
        save(rows, args.out, done == len(args.models), torch.device("cpu"), "budget_steps", draw)


if __name__ == "__main__":
    main()
