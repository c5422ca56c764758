"""The benchmark scripts run end to end and save what they print (smallest settings: behaviour,
not timings)."""
import json
import math
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script, *args):
    done = subprocess.run([sys.executable, BENCHMARKS / script, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_latency_times_every_contender_in_every_mode_and_precision(tmp_path):
    out = run("latency.py", "--models", "mobilenetv2", "--round-to", "1", "8", "--batches", "1", "--repeats", "2",
              "--sample-seconds", "0.01", "--modes", "eager", "channels_last", "--dtypes", "float32", "bfloat16", "--out", tmp_path)
    saved = json.loads((tmp_path / "latency.json").read_text())
    assert saved["complete"] and saved["command"].startswith("python benchmarks/latency.py --models mobilenetv2")
    rows = saved["rows"]
    assert {(r["mode"], r["dtype"], r["round_to"]) for r in rows} == {
        (m, d, r) for m in ("eager", "channels_last") for d in ("float32", "bfloat16") for r in (1, 8)}
    for r in rows:
        assert r["macs_pruned_g"] < r["macs_base_g"] / 2 < 0.16  # the recipe's 0.15 G
        assert r["ms_pruned_range"][0] <= r["ms_pruned"] <= r["ms_pruned_range"][1]
        assert math.isclose(r["efficiency"], r["ms_base"] / r["ms_pruned"] / r["macs_reduction"])
    assert len(out.splitlines()) >= 1 + len(rows)  # the table, one line per row
    assert (tmp_path / "latency.csv").read_text().count("\n") == 1 + len(rows)
    assert (tmp_path / "latency.png").stat().st_size > 10_000


def test_kernel_share_sorts_all_the_time_into_kinds(tmp_path):
    run("kernel_share.py", "--device", "cpu", "--dtype", "float32", "--batch", "1", "--iters", "1", "--models", "deit_b",
        "--round-to", "8", "--out", tmp_path)
    rows = json.loads((tmp_path / "kernel_share.json").read_text())["rows"]
    assert [r["round_to"] for r in rows] == [None, 8]
    for r in rows:
        assert math.isclose(sum(r["ms"].values()), r["ms_total"])
        # a ViT's time goes mostly to its linear layers, and some to attention
        assert r["ms"]["matrix"] > 0.5 * r["ms_total"] and r["ms"].get("attention", 0) > 0, r["ms"]
        assert r["kernels"][0]["ms"] >= r["kernels"][-1]["ms"]
    assert rows[1]["ms"]["matrix"] < rows[0]["ms"]["matrix"]
    assert (tmp_path / "kernel_share.png").stat().st_size > 10_000


def test_latency_target_delivers_its_search_and_saves_it(tmp_path):
    out = run("latency_target.py", "--models", "mobilenetv2", "--batch", "1", "--search-seconds", "0.02", "--repeats", "2",
              "--sample-seconds", "0.01", "--out", tmp_path)
    saved = json.loads((tmp_path / "latency_target.json").read_text())
    assert saved["complete"] and saved["command"].startswith("python benchmarks/latency_target.py --models mobilenetv2")
    (r,) = saved["rows"]
    assert math.isclose(r["asked_speedup"], r["macs_base_g"] / r["macs_macs_g"]) and r["macs_macs_g"] <= 0.15  # the recipe's 0.15 G
    assert math.isclose(r["macs_speedup"], r["ms_base"] / r["macs_ms"]) and math.isclose(r["latency_speedup"], r["ms_base"] / r["latency_ms"])
    assert r["search_speedup"] >= r["asked_speedup"] and r["search_evaluations"] >= 3
    assert r["latency_macs_g"] < r["macs_base_g"]
    assert "mobilenetv2" in out.splitlines()[-2]  # the table row, then where it was saved
    assert (tmp_path / "latency_target.png").stat().st_size > 10_000


def test_budget_steps_records_the_bisection_and_the_landing(tmp_path):
    out = run("budget_steps.py", "--models", "mobilenetv2", "--round-to", "8", "--fractions", "0.33", "0.5", "--out", tmp_path)
    saved = json.loads((tmp_path / "budget_steps.json").read_text())
    assert saved["complete"] and saved["command"].startswith("python benchmarks/budget_steps.py --models mobilenetv2")
    rows = saved["rows"]
    assert [(r["round_to"], r["fraction"]) for r in rows] == [(8, 0.33), (8, 0.5)]
    for r in rows:
        assert r["bisected"] <= r["landed"] <= 1.0 and math.isclose(r["budget_g"], r["fraction"] * r["macs_base_g"], rel_tol=1e-5)
    step = rows[0]  # 0.33 of MobileNetV2's MACs lies inside the step at ratio 0.5 (see tests/test_depth_budget.py)
    assert step["bisected"] < 0.97 and step["landed"] >= 0.99 and step["filled"] > 0
    assert "mobilenetv2" in out.splitlines()[-2]
    assert (tmp_path / "budget_steps.png").stat().st_size > 10_000


def test_memory_estimate_sets_the_check_beside_training_steps(tmp_path):
    out = run("memory_estimate.py", "--models", "test_resnet", "--batches", "2", "4", "--steps", "2", "--out", tmp_path)
    saved = json.loads((tmp_path / "memory_estimate.json").read_text())
    assert saved["complete"] and saved["command"].startswith("python benchmarks/memory_estimate.py --models test_resnet")
    small, large = saved["rows"]
    assert (small["batch"], large["batch"]) == (2, 4) and small["per_image_mib"] == large["per_image_mib"] > 0
    assert large["estimate_gib"] > small["estimate_gib"] > 0 and small["step_gib"] > 0
    assert all(math.isclose(r["ratio"], r["estimate_gib"] / r["step_gib"]) for r in (small, large))
    assert "test_resnet" in out.splitlines()[1]
    assert (tmp_path / "memory_estimate.png").stat().st_size > 10_000


def test_calibration_pieces_measures_each_split_against_the_whole_batch(tmp_path):
    out = run("calibration_pieces.py", "--models", "test_resnet", "--batch", "4", "--pieces", "2", "1", "--out", tmp_path)
    saved = json.loads((tmp_path / "calibration_pieces.json").read_text())
    assert saved["complete"] and saved["command"].startswith("python benchmarks/calibration_pieces.py --models test_resnet")
    rows = saved["rows"]
    assert [r["piece"] for r in rows] == [4, 2, 1] and rows[0]["farthest"] == 0
    assert all(r["farthest"] < 1e-4 and r["peak_gib"] > 0 and r["seconds"] > 0 for r in rows)  # the same statistics, split or not
    assert len(out.splitlines()) == 1 + len(rows) + 1  # header, rows, where it saved
    assert (tmp_path / "calibration_pieces.png").stat().st_size > 10_000
