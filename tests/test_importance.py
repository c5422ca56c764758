"""Importance criteria: registry, calibration, and that scores mean something."""
import pytest
import torch
import torch.nn.functional as F

import isoprune
from isoprune import _importance
from conftest import make


@pytest.mark.parametrize("criterion", ["taylor", "hessian"])
def test_gradient_criteria_use_real_calibration_data(criterion, digits_batches):
    model = make("test_resnet")
    model.train()
    plan = isoprune.plan(model, 0.3, importance=criterion, calib=digits_batches, example_inputs=digits_batches[0][0][:1])
    assert plan.importance == criterion
    assert model.training and all(p.grad is None for p in model.parameters())
    isoprune.apply_plan(model, plan, example_inputs=digits_batches[0][0][:1])
    assert model(digits_batches[0][0]).shape == (32, 10)


def test_calibration_gives_mean_gradients_holding_one_gradient_at_a_time(digits_batches):
    model = make("test_resnet").eval()
    params = [p for p in model.parameters()]
    batches = digits_batches[:3]
    mean = [torch.zeros_like(p) for p in params]
    mean_sq = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        for p, g, sq in zip(params, mean, mean_sq):
            g += p.grad / len(batches)
            sq += p.grad.square() / len(batches)
    model.zero_grad(set_to_none=True)
    live = []  # how many parameters hold a gradient each time backward finishes one
    for p in params:
        p.register_post_accumulate_grad_hook(lambda _: live.append(sum(q.grad is not None for q in params)))
    stats = _importance.calibrate(model, batches, stats=("grad", "sq_grad"))
    assert max(live) == 1 and len(live) == len(params) * len(batches)
    for p, g, sq in zip(params, mean, mean_sq):
        torch.testing.assert_close(stats["grad"][p], g, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(stats["sq_grad"][p], sq, rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("chunk", [32, 12, 1])
def test_a_batch_calibrated_in_pieces_gives_the_batchs_statistics(chunk, digits_batches):
    model = make("test_resnet").eval()  # BatchNorm in eval mode: a piece's outputs are the batch's
    params = [p for p in model.parameters()]
    whole = _importance.calibrate(model, digits_batches[:2], stats=("grad", "sq_grad"))
    passes = []
    model.register_forward_pre_hook(lambda _, args: passes.append(len(args[0])))
    pieces = _importance.calibrate(model, digits_batches[:2], stats=("grad", "sq_grad"), chunk=chunk)
    assert passes == 2 * [len(piece) for piece in torch.arange(32).split(chunk)]  # 32: [32]; 12: [12, 12, 8]
    for p in params:  # the squared gradient is the batch's gradient squared, not a sum of the pieces' squares
        torch.testing.assert_close(pieces["grad"][p], whole["grad"][p], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(pieces["sq_grad"][p], whole["sq_grad"][p], rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in params)


def test_gradient_criteria_need_calibration():
    with pytest.raises(isoprune.IsopruneError, match="needs calibration data"):
        isoprune.plan(make("test_resnet"), 0.3, importance="taylor")


def test_calibration_data_the_model_cannot_take_is_named_by_batch(digits_batches):
    model = make("test_resnet", num_classes=10)
    x, y = digits_batches[0]
    cases = {
        "images alone": ([x], r"calibration batch 1 is a Tensor, not an \(inputs, targets\) pair"),
        "a triple": ([(x, y, y)], r"calibration batch 1 is a tuple of 3, not an \(inputs, targets\) pair"),
        "labels past the head": ([(x, y), (x, y + 10)], r"calibration batch 2 \(inputs \[.*\], targets \[.*\]\) failed: IndexError: .*; "
                                                        r".*class indices below its 10 classes"),
        "images of one channel": ([(x[:, :1], y)], r"calibration batch 1 \(inputs \[.*, 1, .*\], targets .*\) failed: RuntimeError"),
    }
    for case, (calib, message) in cases.items():
        with pytest.raises(isoprune.IsopruneError, match=message):
            isoprune.plan(model, 0.3, importance="taylor", calib=calib)
        assert all(p.grad is None for p in model.parameters()), case


def test_a_model_by_name_is_refused_with_how_to_build_it():
    for call in (lambda: isoprune.plan("resnet50", 0.3), lambda: isoprune.count("resnet50"), lambda: isoprune.isomorphic_groups("resnet50")):
        with pytest.raises(isoprune.IsopruneError, match=r"expected a model \(a torch nn.Module\), not str 'resnet50'; build it first: isoprune.create_model"):
            call()


def test_magnitude_removes_the_smallest_channels():
    model = make("test_vit")
    with torch.no_grad():
        mlp = model.blocks[0].mlp  # ten tiny hidden units in the first MLP: in, bias and out
        mlp.fc1.weight[:10] *= 1e-3
        mlp.fc1.bias[:10] *= 1e-3
        mlp.fc2.weight[:, :10] *= 1e-3
    plan = isoprune.plan(model, isoprune.Ratios(mlp=10 / (6 * 192) + 1e-6), scope="isomorphic")
    first = next(g for g in plan.groups if g.root == "blocks.0.mlp.fc1")
    assert set(range(10)).isdisjoint(first.keep) and len(first.keep) == 182


def test_heads_are_scored_whole():
    model = make("test_vit")
    with torch.no_grad():
        model.blocks[2].attn.qkv.weight.view(3, 2, 32, -1)[:, 1] *= 1e-3  # head 1 of block 2 is tiny
    plan = isoprune.plan(model, isoprune.Ratios(heads=1 / 12 + 1e-6))
    heads = {g.root: g.keep for g in plan.groups if g.kind == "heads"}
    assert heads["blocks.2.attn.qkv"] == [0]
    assert all(keep == [0, 1] for root, keep in heads.items() if root != "blocks.2.attn.qkv")


def test_custom_criterion_by_registry():
    @isoprune.register_importance("negative_l1")
    class NegativeL1(isoprune.Importance):
        def elementwise(self, weight, grad, sq_grad):
            return -weight.abs()

    assert "negative_l1" in isoprune.available_importances()
    plan = isoprune.plan(make("test_resnet"), 0.5, importance="negative_l1")
    assert plan.importance == "negative_l1"


def test_random_is_seeded_and_differs_from_magnitude():
    model = make("test_resnet")
    a = isoprune.plan(model, 0.5, importance="random")
    b = isoprune.plan(model, 0.5, importance="random")
    c = isoprune.plan(model, 0.5, importance="l2")
    assert [g.keep for g in a.groups] == [g.keep for g in b.groups]
    assert [g.keep for g in a.groups] != [g.keep for g in c.groups]


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_scores_taken_a_few_rows_at_a_time_are_the_whole_weights(name, digits_batches, monkeypatch):
    """Scoring goes over each weight in chunks of rows (for memory); with chunks of a few
    elements, every weight here spans many, and the scores must be what one pass gives."""
    from isoprune._groups import analyse

    model = make(name)
    inputs = None if name == "test_vit" else digits_batches[0][0][:1]
    analysis = analyse(model, inputs)
    calib = None if name == "test_vit" else digits_batches[:1]
    for importance in ("l2", "taylor") if calib else ("l2", "l1"):
        criterion = _importance.get_importance(importance)
        stats = _importance.calibrate(model, calib, None, criterion.stats) if criterion.needs_calib else None
        whole = _importance.channel_scores(model, analysis, criterion, stats)
        calls = []
        monkeypatch.setattr(criterion, "elementwise", lambda *t, _f=criterion.elementwise: calls.append(1) or _f(*t))
        monkeypatch.setattr(_importance._ChannelSums, "CHUNK", 7)
        chunked = _importance.channel_scores(model, analysis, criterion, stats)
        monkeypatch.undo()
        assert len(calls) > 10 * len(analysis.tp_groups)  # chunks of a few rows, not one pass a weight
        assert all(torch.allclose(a, b, rtol=1e-5, atol=0) for a, b in zip(chunked, whole))
