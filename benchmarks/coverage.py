"""Coverage over timm: prune the smallest model of every family 30% with defaults, isoprune and
Torch-Pruning's MetaPruner side by side, and say where each one fails.

    python benchmarks/coverage.py --jobs 2 --timeout 240

A family is a model name's first word without its size suffix (``resnet50d`` -> ``resnet``,
``convnextv2_atto`` -> ``convnextv2``; ``tf_``/``gluon_``/``legacy_`` ports join their family);
its smallest member by parameter count stands for it. Each model runs in a fresh process with a
time limit: random init, the model's default input size, batch 2. isoprune runs
``isoprune.prune(model, 0.3)``; Torch-Pruning runs ``MetaPruner`` with l2 group magnitude, ratio
0.3 and the classifier ignored (the README's usage). The stage that failed is recorded:

- ``build``: timm cannot build or run the unpruned model here (not counted against either tool);
- ``trace``: the dependency graph / grouping; ``plan``: importance and selection (isoprune);
  ``apply``: cutting the weights (``prune`` for Torch-Pruning, whose step does both);
- ``forward``: the pruned model fails to run, returns another output shape, or is not smaller;
- ``timeout``: the time limit passed.

For every model that runs, ``macs_removed`` is the share of its MACs gone, and ``of_asked`` that
share over 51%, what a 30% cut of every layer's inputs and outputs removes: a model pruned much
less than asked (groups left whole, layers nothing couples to) shows as a low ``of_asked``.

Writes ``results/coverage.csv`` (one row per model and tool), ``coverage.json`` (rates and the
command) and ``coverage.png`` (where each tool's models end). ``--report`` rewrites the summary and
the plot from the saved table, running nothing.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TOOLS = ("isoprune", "torch-pruning")
STAGES = ("ok", "trace", "plan", "apply", "prune", "forward", "timeout")
RATIO = 0.3
ASKED = 1 - (1 - RATIO) ** 2
"""The share of MACs 30% pruning removes from a layer that loses 30% of its inputs and outputs."""


def family(name: str) -> str:
    word = re.sub(r"^(tf|gluon|legacy)_", "", name).split("_")[0]
    return word if re.search(r"v\d+$", word) else re.sub(r"\d+[a-z]*$", "", word) or word


def smallest_per_family() -> dict[str, str]:
    """Family -> its member with the fewest parameters, counted on the meta device."""
    import timm
    import torch

    best: dict[str, tuple[int, str]] = {}
    for name in timm.list_models():
        if name.startswith("test_"):
            continue
        try:
            with torch.device("meta"):
                params = sum(p.numel() for p in timm.create_model(name).parameters())
        except Exception:  # noqa: BLE001 - a model that cannot even be built on meta stays out
            continue
        key = family(name)
        if key not in best or params < best[key][0]:
            best[key] = (params, name)
    return {key: name for key, (_, name) in sorted(best.items())}


def _stage(exc: BaseException, tool: str) -> str:
    """Which phase raised, read from the isoprune frames of the traceback."""
    if tool == "torch-pruning":
        return "prune"
    frames = [(Path(f.filename).name, f.name) for f in traceback.extract_tb(exc.__traceback__) if "isoprune" in f.filename]
    if any(file in ("_trace.py", "_groups.py") for file, _ in frames):
        return "trace"
    return "apply" if any(name == "apply_plan" for _, name in frames) else "plan"


def run_one(tool: str, name: str) -> dict:
    import logging
    import warnings

    import timm
    import torch

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    row = {"model": name, "tool": tool, "stage": "ok", "error": "", "macs_before": None, "macs_after": None, "seconds": None}
    try:
        model = timm.create_model(name).eval()
        x = torch.randn(2, *model.pretrained_cfg["input_size"])
        with torch.no_grad():
            expected = model(x).shape
    except Exception as exc:  # noqa: BLE001
        return {**row, "stage": "build", "error": _line(exc)}
    import isoprune

    row["macs_before"] = isoprune.count(model, x[:1])[0]
    start = time.perf_counter()
    try:
        if tool == "isoprune":
            isoprune.prune(model, RATIO, example_inputs=x[:1])
        else:
            _torch_pruning(model, x[:1])
    except Exception as exc:  # noqa: BLE001
        return {**row, "stage": _stage(exc, tool), "error": _line(exc)}
    row["seconds"] = round(time.perf_counter() - start, 3)
    try:
        with torch.no_grad():
            got = model(x).shape
        row["macs_after"] = isoprune.count(model, x[:1])[0]
    except Exception as exc:  # noqa: BLE001
        return {**row, "stage": "forward", "error": _line(exc)}
    if got != expected:
        return {**row, "stage": "forward", "error": f"output shape {tuple(got)}, expected {tuple(expected)}"}
    if row["macs_after"] >= row["macs_before"]:
        return {**row, "stage": "forward", "error": "nothing was removed"}
    return row


def _torch_pruning(model, x) -> None:
    import torch_pruning as tp
    from torch import nn

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    ignored = [m for m in (head if isinstance(head, tuple) else [head]) if isinstance(m, nn.Module)]
    try:
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=RATIO, ignored_layers=ignored)
    except Exception as exc:  # noqa: BLE001 - building the pruner is Torch-Pruning's trace
        raise _TraceError(_line(exc)) from exc
    pruner.step()


class _TraceError(RuntimeError):
    pass


def _line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text[:300]


def _subprocess(tool: str, name: str, timeout: int) -> dict:
    try:
        done = subprocess.run([sys.executable, __file__, "--one", tool, name], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return {"model": name, "tool": tool, "stage": "timeout", "error": f"over {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": name, "tool": tool, "stage": "crash", "error": tail[:300]}
    return json.loads(lines[-1])


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in (*STAGES, "crash") if any(r["stage"] == s for r in rows)]
    fig, ax = plt.subplots(figsize=(7, 3))
    for i, tool in enumerate(TOOLS):
        left = 0
        mine = [r for r in rows if r["tool"] == tool and r["stage"] != "build"]
        for j, stage in enumerate(stages):
            n = sum(r["stage"] == stage for r in mine)
            ax.barh(i, n, left=left, color=plt.cm.tab10(j), label=stage if i == 0 else None)
            left += n
    ax.set_yticks(range(len(TOOLS)), TOOLS)
    ax.set_xlabel("model families (smallest member each)")
    ax.set_title(f"timm coverage: prune {RATIO:.0%}, run, same output shape")
    ax.legend(ncol=len(stages), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _previous_rows(jobs: list[tuple[str, str]]) -> list[dict]:
    """The rows of results/coverage.csv for every (tool, model) not run again now."""
    path = RESULTS / "coverage.csv"
    rows = [r for r in csv.DictReader(path.open())] if path.is_file() else []
    return [r for r in rows if (r["tool"], r["model"]) not in set(jobs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="models run at once, one process each")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per model and tool")
    ap.add_argument("--families", nargs="*", help="run only these families (default: all)")
    ap.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS), help="run only these tools")
    ap.add_argument("--report", action="store_true", help="summarise results/coverage.csv again, running nothing")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.report:
        rows = list(csv.DictReader((RESULTS / "coverage.csv").open()))
        report(rows, json.loads((RESULTS / "coverage.json").read_text()).get("commands", []))
        return
    if args.one:
        try:
            print(json.dumps(run_one(*args.one)))
        except _TraceError as exc:
            print(json.dumps({"model": args.one[1], "tool": args.one[0], "stage": "trace", "error": str(exc)}))
        return
    families = smallest_per_family()
    chosen = [name for key, name in families.items() if not args.families or key in args.families]
    jobs = [(tool, name) for name in chosen for tool in args.tools]
    kept = _previous_rows(jobs) if args.families or len(args.tools) < len(TOOLS) else []  # a partial run updates the table
    from tqdm import tqdm

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(tqdm(pool.map(lambda job: _subprocess(*job, args.timeout), jobs), total=len(jobs), desc="models"))
    rows = sorted(rows + kept, key=lambda r: (r["model"], TOOLS.index(r["tool"])))
    by_model = {name: key for key, name in families.items()}
    for row in rows:
        row["family"] = by_model[row["model"]]
    command = " ".join(["benchmarks/coverage.py", *sys.argv[1:]])
    earlier = json.loads((RESULTS / "coverage.json").read_text()) if kept and (RESULTS / "coverage.json").is_file() else {}
    commands = earlier.get("commands", [earlier["command"]] if "command" in earlier else []) + [command]  # the runs in the table
    report(rows, commands)


def report(rows: list[dict], commands: list[str]) -> None:
    """Write the table, the summary and the plot, and print them."""
    for row in rows:
        ran = row["stage"] == "ok" and row["macs_before"] not in (None, "")
        row["macs_removed"] = round(1 - float(row["macs_after"]) / float(row["macs_before"]), 4) if ran else ""
        row["of_asked"] = round(row["macs_removed"] / ASKED, 3) if ran else ""
    RESULTS.mkdir(exist_ok=True)
    fields = ["family", "model", "tool", "stage", "error", "macs_before", "macs_after", "macs_removed", "of_asked", "seconds"]
    with open(RESULTS / "coverage.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = {}
    for tool in TOOLS:
        mine = [r for r in rows if r["tool"] == tool and r["stage"] != "build"]
        ok = sum(r["stage"] == "ok" for r in mine)
        asked = sorted(r["of_asked"] for r in mine if r["of_asked"] != "")
        summary[tool] = {"families": len(mine), "ok": ok, "rate": ok / max(len(mine), 1),
                         "by_stage": {s: sum(r["stage"] == s for r in mine) for s in {r["stage"] for r in mine}},
                         "median_of_asked": asked[len(asked) // 2] if asked else None,
                         "under_half_asked": sorted(r["model"] for r in mine if r["of_asked"] != "" and r["of_asked"] < 0.5)}
    unbuildable = sorted(r["model"] for r in rows if r["tool"] == TOOLS[0] and r["stage"] == "build")
    result = {"command": commands[-1] if commands else "", "commands": commands, "ratio": RATIO, "summary": summary, "not_buildable": unbuildable}
    (RESULTS / "coverage.json").write_text(json.dumps(result, indent=1))
    draw(rows, RESULTS / "coverage.png")
    print(f"{'tool':<14} {'families':>8} {'ok':>4} {'rate':>6} {'of asked':>8}  failures by stage")
    for tool, s in summary.items():
        failures = ", ".join(f"{k} {v}" for k, v in sorted(s["by_stage"].items()) if k != "ok")
        print(f"{tool:<14} {s['families']:>8} {s['ok']:>4} {s['rate']:>6.1%} {s['median_of_asked'] or 0:>8.2f}  {failures}")
        print(f"  {tool} removes under half the MACs asked from: {', '.join(s['under_half_asked']) or 'none'}")
    print(f"not buildable here ({len(unbuildable)}): {', '.join(unbuildable)}")
    for row in rows:
        if row["tool"] == "isoprune" and row["stage"] not in ("ok", "build"):
            print(f"  isoprune {row['stage']:<8} {row['model']}: {row['error']}")


if __name__ == "__main__":
    main()
