"""Asked for a speedup, do you get it? A MACs target against a latency target.

    python benchmarks/latency_target.py --batch 8 --repeats 5

Each model is pruned twice from its paper recipe's shape (DeiT-B -> 4.2 G, ConvNeXt-B -> 8.5 G,
ResNet-50 -> 2.0 G, MobileNetV2 -> 0.15 G; l2 magnitude, random weights, widths rounded to
``--round-to``):
- ``macs``: as the recipe does, to its MACs, a fraction ``f`` of the unpruned model's;
- ``latency``: to ``latency=f``: the same ratio shape, scaled until the pruned model, timed while
  it is planned, takes ``f`` of the unpruned model's time (``isoprune.Timing``: the batch, mode and
  precision of this run, on its device).

Both ask for the same speedup, ``1/f``. Then the unpruned model and the two pruned ones take turns
in ``--repeats`` rounds (as in ``latency.py``: a sample is as many passes as fill
``--sample-seconds``), timed afresh, apart from the search's own timings. Reported per model: the
speedup asked, the speedup each target delivers and their MACs, and how long the latency search
took: its shapes, and the rounds they were timed in (more where the noise straddled the budget).

``--mode channels_last`` times (and searches) with weights and input in channels-last memory
format. On a GPU (``--device cuda``), ``--dtype float16`` times in half precision, as models are
deployed there.

Writes ``results/latency_target/latency_target.csv``, ``latency_target.json`` (with the command)
and ``latency_target.png``.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from isoprune._latency import DTYPES
from latency import RECIPES, ROOT, save, set_up, time_all  # benchmarks/, beside this script

RESULTS = Path(__file__).parent / "results" / "latency_target"


def contenders(recipe_name: str, timing, device: torch.device, round_to: int) -> tuple[list[dict], float, float]:
    """The unpruned model, the recipe's MACs target and the same share as a latency target; and
    the seconds the latency search took."""
    import timm

    import isoprune
    from isoprune import _models, _recipes

    p = _recipes.load_recipe(ROOT / "recipes" / RECIPES[recipe_name]).prune
    torch.manual_seed(0)
    base = timm.create_model(_models.architecture(p.model)).eval().to(device)
    macs = isoprune.count(base)[0]
    by_macs = isoprune.prune(copy.deepcopy(base), dict(p.ratios), budget=p.target, round_to=round_to)
    share = isoprune.count(by_macs)[0] / macs
    began = time.perf_counter()
    by_latency = isoprune.prune(copy.deepcopy(base), dict(p.ratios), budget=f"latency={100 * share:.4f}%", timing=timing, round_to=round_to)
    search_s = time.perf_counter() - began
    models = [{"name": "base", "model": base, "macs": macs}]
    for name, model in (("macs", by_macs), ("latency", by_latency)):
        models.append({"name": name, "model": model, "macs": isoprune.count(model)[0], "plan": model.isoprune_plan})
    return models, share, search_s


def row_for(recipe_name: str, models: list[dict], share: float, search_s: float, times: dict, args) -> dict:
    base_s = statistics.median(times["base"])
    found = models[2]["plan"].search
    row = {"model": recipe_name, "device": args.device, "mode": args.mode, "dtype": args.dtype, "batch": args.batch, "round_to": args.round_to,
           "asked_speedup": 1 / share, "ms_base": 1e3 * base_s, "ms_base_range": [1e3 * min(times["base"]), 1e3 * max(times["base"])],
           "macs_base_g": models[0]["macs"] / 1e9}
    for m in models[1:]:
        s = times[m["name"]]
        row.update({f"{m['name']}_macs_g": m["macs"] / 1e9, f"{m['name']}_ms": 1e3 * statistics.median(s),
                    f"{m['name']}_ms_range": [1e3 * min(s), 1e3 * max(s)], f"{m['name']}_speedup": base_s / statistics.median(s)})
    row.update({"search_speedup": found["before"] / found["after"], "search_evaluations": found["evaluations"],
                "search_rounds": sum(s["rounds"] for s in found["shapes"]), "search_s": search_s, "search_shapes": found["shapes"]})
    return row


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(rows), 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["macs_speedup"] for r in rows], 0.4, label="MACs target")
    ax.bar([i + 0.2 for i in x], [r["latency_speedup"] for r in rows], 0.4, label="latency target")
    for i, r in enumerate(rows):
        ax.hlines(r["asked_speedup"], i - 0.45, i + 0.45, color="black", lw=1.5, label="asked" if i == 0 else None)
    ax.set_xticks(list(x), [r["model"] for r in rows])
    r = rows[0]
    ax.set(ylabel="measured speedup", title=f"{r['device']}, {r['mode']}, {r['dtype']}, batch {r['batch']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    import isoprune

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--round-to", type=int, default=8, help="widths rounded to multiples of this, in both targets (8: as deployed)")
    ap.add_argument("--mode", default="eager", choices=["eager", "channels_last"], help="how the models run, searched and timed alike")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES), help="precision to run in (half ones on a GPU)")
    ap.add_argument("--search-seconds", type=float, default=1.0,
                    help="each shape the latency search tries, and the unpruned model beside it, is timed this long")
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds of the final timing")
    ap.add_argument("--sample-seconds", type=float, default=0.5, help="forward passes per sample fill this long")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    device = set_up(args)
    timing = isoprune.Timing(args.batch, args.dtype, args.mode == "channels_last", args.search_seconds)
    rows = []
    print(f"{'model':<12} {'asked':>6} | {'MACs target':>22} | {'latency target':>22} {'search':>16}")
    for done, name in enumerate(args.models, 1):
        models, share, search_s = contenders(name, timing, device, args.round_to)
        times = time_all(models, args.batch, args.repeats, args.sample_seconds, device, args.mode, DTYPES[args.dtype])
        r = row_for(name, models, share, search_s, times, args)
        print(f"{name:<12} {r['asked_speedup']:>5.2f}x | {r['macs_macs_g']:>7.3f} G {r['macs_speedup']:>5.2f}x faster | "
              f"{r['latency_macs_g']:>7.3f} G {r['latency_speedup']:>5.2f}x faster {r['search_s']:>5.0f} s, {r['search_evaluations']:>2} shapes in {r['search_rounds']} rounds", flush=True)
        rows.append(r)
        save(rows, args.out, done == len(args.models), device, "latency_target", draw)  # after each model: a long run cut short keeps what it measured


if __name__ == "__main__":
    main()
