"""Token reduction (isoprune.tokens): exactness at keep rate 1, restore, shapes, and each method's rule."""
import copy

import pytest
import timm
import torch
from timm.models.vision_transformer import ResPostBlock
from torch.utils.flop_counter import FlopCounterMode

import isoprune
from isoprune import tokens

from conftest import make

METHODS = ["simprune", "evit", "tome"]


def vit(**kwargs) -> torch.nn.Module:
    """A small ViT with 64 patch tokens, a class token and 4 blocks, in train mode."""
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3, num_classes=10)
    return timm.create_model("vit_tiny_patch16_224", **{**args, **kwargs}).train()


def views(batch: int = 2) -> torch.Tensor:
    """Two noisy views [A; B] of the same random images."""
    torch.manual_seed(1)
    images = torch.randn(batch, 3, 32, 32)
    return torch.cat([images + 0.1 * torch.randn_like(images), images + 0.1 * torch.randn_like(images)])


def token_counts(model, x) -> list[int]:
    counts = []
    hooks = [b.mlp.register_forward_hook(lambda m, i, o: counts.append(o.shape[1])) for b in model.blocks]
    model(x)
    for h in hooks:
        h.remove()
    return counts


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kwargs", [{}, {"init_values": 0.1, "drop_path_rate": 0.2, "reg_tokens": 2}, {"block_fn": ResPostBlock}])
def test_keep_rate_one_is_the_unreduced_model_and_remove_restores_it(method, kwargs):
    model, x = vit(**kwargs), views()
    torch.manual_seed(2)
    ref = model(x)
    keys = set(model.state_dict())
    pruner = tokens.apply(model, method, keep_rate=1.0)
    pruner.progress = 0.5
    torch.manual_seed(2)
    assert torch.equal(model(x), ref)
    tokens.remove(model)
    tokens.apply(model, method, keep_rate=0.5)
    torch.manual_seed(2)
    assert not torch.allclose(model(x), ref)
    tokens.remove(model)
    torch.manual_seed(2)
    assert torch.equal(model(x), ref)
    assert set(model.state_dict()) == keys and tokens.pruner_of(model) is None
    assert all("forward" not in b.__dict__ for b in model.blocks)
    assert not any(b.attn.qkv._forward_hooks for b in model.blocks)


@pytest.mark.parametrize("method", METHODS)
def test_reduction_happens_between_attention_and_mlp_at_the_chosen_blocks(method):
    model, x = vit(), views()
    tokens.apply(model, method, keep_rate=0.75, blocks=(1, 3))
    # 64 patches -> 48 -> 36; EViT adds its fused token, which counts as a patch at the next block
    expected = [65, 50, 50, 1 + 37 + 1] if method == "evit" else [65, 49, 49, 37]
    assert token_counts(model, x) == expected
    model.eval()
    assert token_counts(model, x) == [65] * 4  # eval runs unreduced
    tokens.remove(model)
    tokens.apply(model, method, keep_rate=0.75, blocks=(1, 3), in_eval=True)
    assert token_counts(model.eval(), x)[1] < 65


def test_default_blocks_are_the_quarters_of_the_depth():
    model = vit(depth=12)
    assert tokens.apply(model, "simprune").blocks == (3, 6, 9)


@pytest.mark.parametrize("method", METHODS)
def test_training_with_reduction_is_exact_under_gradient_checkpointing(method):
    model, x = vit(), views()
    tokens.apply(model, method, keep_rate=0.7)
    outputs, grads = [], []
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append(model.blocks[2].mlp.fc1.weight.grad.clone())
    assert torch.allclose(*outputs, atol=1e-6) and torch.allclose(*grads, atol=1e-5)


def test_simprune_window_slides_from_dissimilar_to_similar_pairs():
    model, x = vit(), views(4)
    pruner = tokens.apply(model, "simprune", keep_rate=0.7, blocks=(2,))
    means = []
    for progress in (0.0, 0.5, 1.0):
        pruner.progress = progress
        model(x)
        means.append(pruner.similarity[2].item())
    assert means[0] < means[1] < means[2]


def test_simprune_drops_matched_pairs_and_both_views_keep_the_same_count():
    model, x = vit(), views(3)
    pruner = tokens.apply(model, "simprune", keep_rate=0.75, blocks=(0,))
    seen = {}
    model.blocks[0].mlp.register_forward_pre_hook(lambda m, i: seen.update({"x": i[0]}))
    model(x)
    kept = pruner.choices[0]
    assert kept.shape == (6, 48) and seen["x"].shape == (6, 49, 48)
    # with identical views every token matches itself, so both views keep the same positions
    pruner.choices.clear()
    model(torch.cat([x[:3], x[:3]]))
    same = pruner.choices[0]
    assert torch.equal(same[:3], same[3:])


def test_simprune_needs_two_views():
    model = vit()
    tokens.apply(model, "simprune")
    with pytest.raises(isoprune.IsopruneError, match="two views"):
        model(views()[:3])


def test_simprune_replays_the_teacher_choice_in_the_student():
    student = vit()
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    t, s = tokens.apply(teacher, "simprune", 0.7), tokens.apply(student, "simprune", 0.7)
    x = views()
    teacher(x), student(x)
    assert not all(torch.equal(t.choices[i], s.choices[i]) for i in t.choices)
    s.follow(t)
    student(x)
    assert all(torch.equal(t.choices[i], s.choices[i]) for i in t.choices)


def test_a_deep_copy_has_its_own_pruner():
    model = vit()
    pruner = tokens.apply(model, "tome", 0.7)
    twin = copy.deepcopy(model)
    other = tokens.pruner_of(twin)
    assert other is not pruner and twin.blocks[1]._isoprune_tokens.pruner is other
    twin(views())
    assert pruner.sizes == {} and other.sizes
    with pytest.raises(isoprune.IsopruneError, match="already"):
        tokens.apply(twin, "evit")


def test_evit_keeps_the_tokens_the_class_token_attends_to_and_fuses_the_rest():
    model, x = vit(), views()
    pruner = tokens.apply(model, "evit", keep_rate=0.5, blocks=(1,))
    block = model.blocks[1]
    captured = {}
    block.attn.qkv.register_forward_hook(lambda m, i, o: captured.update({"in": i[0]}))
    block.mlp.register_forward_pre_hook(lambda m, i: captured.update({"reduced": i[0]}))
    model(x)
    attn = block.attn
    q, k, _ = attn.qkv(captured["in"]).reshape(4, 65, 3, 3, 16).permute(2, 0, 3, 1, 4)
    weight = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(-1).mean(1)[:, 0, 1:]
    expected = weight.topk(32, dim=1).indices.sort(dim=1).values
    assert torch.equal(pruner.choices[1], expected)
    assert captured["reduced"].shape == (4, 1 + 32 + 1, 48)


def test_tome_merges_by_size_weighted_average_and_conserves_mass():
    model, x = vit(), views()
    pruner = tokens.apply(model, "tome", keep_rate=0.75, blocks=(0, 2))
    block, seen = model.blocks[2], {}
    original = block._isoprune_tokens.pruner.reduce

    def spy(site, h):
        out = original(site, h)
        if site.index == 2:
            seen["in"], seen["out"] = h, out
        return out

    pruner.reduce = spy
    model(x)
    sizes_in, sizes_out = pruner.sizes[0], pruner.sizes[2]
    assert sizes_out.shape == (4, 1 + 36) and torch.all(sizes_out.sum(1) == 65)
    mass_in = (seen["in"] * sizes_in[..., None]).sum(1)
    mass_out = (seen["out"] * sizes_out[..., None]).sum(1)
    assert torch.allclose(mass_in, mass_out, atol=1e-4)


def test_tome_uses_proportional_attention_after_a_merge():
    model, x = vit(), views()
    tokens.apply(model, "tome", keep_rate=0.75, blocks=(0,))
    with_bias = model(x)
    tokens.remove(model)
    tokens.apply(model, "tome", keep_rate=0.75, blocks=(0,), proportional=False)
    assert not torch.allclose(model(x), with_bias)


@pytest.mark.parametrize("method", METHODS)
def test_a_width_pruned_vit_takes_token_reduction(method):
    model = make("test_vit").train()
    isoprune.prune(model, isoprune.Ratios(emb=0.25, heads=0.5, head_dim=0.25, mlp=0.5))
    tokens.apply(model, method, keep_rate=0.7, blocks=(0, 1))
    x = torch.randn(4, 3, *model.patch_embed.img_size)
    out = model(x)
    out.sum().backward()
    assert out.shape == (4, 10)


def test_dynamic_image_size_reduces_each_resolution():
    model = vit(dynamic_img_size=True)
    tokens.apply(model, "simprune", keep_rate=0.5, blocks=(0,))
    assert token_counts(model, torch.randn(2, 3, 32, 32))[0] == 1 + 32
    assert token_counts(model, torch.randn(2, 3, 48, 48))[0] == 1 + 72


def test_flop_counter_counts_attention_and_reduction_saves_flops():
    model, x = vit(), views()
    with FlopCounterMode(display=False) as full:
        model(x)
    tokens.apply(model, "simprune", keep_rate=0.5, blocks=(0,))
    with FlopCounterMode(display=False) as reduced:
        model(x)
    attention = [op for op in full.get_flop_counts()["Global"] if "scaled_dot_product" in str(op)]
    assert attention, "attention FLOPs are not counted"
    assert reduced.get_total_flops() < 0.7 * full.get_total_flops()


def test_bad_settings_are_user_errors():
    model = vit()
    for kwargs, match in [(dict(method="drop"), "unknown token method"), (dict(keep_rate=0.0), "outside"),
                          (dict(method="tome", keep_rate=0.4), "at most half"), (dict(blocks=(7,)), "do not exist"),
                          (dict(keep_rate="0.5"), "keep_rate must be a number, not '0.5'")]:
        with pytest.raises(isoprune.IsopruneError, match=match):
            tokens.apply(model, **{"method": "simprune", **kwargs})
    with pytest.raises(isoprune.IsopruneError, match="VisionTransformer"):
        tokens.apply(make("test_resnet"), "simprune")
    with pytest.raises(isoprune.IsopruneError, match="not str 'vit_small_patch16_224'; build it first"):
        tokens.apply("vit_small_patch16_224", "simprune")
    with pytest.raises(isoprune.IsopruneError, match="class token"):
        tokens.apply(vit(class_token=False, global_pool="avg"), "evit")


def test_keep_rate_warms_up_from_one():
    pruner = tokens.apply(vit(), "evit", keep_rate=0.6, warmup=0.5)
    pruner.progress = 0.0
    assert pruner.keep_rate == 1.0
    pruner.progress = 0.25
    assert 0.6 < pruner.keep_rate < 1.0
    pruner.progress = 0.75
    assert pruner.keep_rate == 0.6


# -- dynamic SimPrune -----------------------------------------------------------------------------

def test_dynamic_simprune_starts_keeping_everything_and_its_gate_learns():
    model, x = vit(), views()
    torch.manual_seed(2)
    before = model(x)
    pruner = tokens.apply(model, "simprune", dynamic=True)
    assert set(model.state_dict()) == set(vit().state_dict())  # the gates live in the pruner
    out = model(x)
    assert torch.equal(out, before) and pruner.measured == 1.0  # the gate starts at p = 0.88
    (out.square().mean() + pruner.penalty()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pruner.gates.parameters() if p.ndim == 1 and p.numel() == 1)


def test_dynamic_simprune_drops_within_the_candidate_window_only():
    # a gate that rejects every candidate drops exactly the fixed window of the same width
    x = views()
    fixed, dynamic = vit(), vit()
    f = tokens.apply(fixed, "simprune", keep_rate=0.5)
    d = tokens.apply(dynamic, "simprune", dynamic=True, candidates=0.5)
    for gate in d.gates.values():
        torch.nn.init.constant_(gate.score.bias, -3.0)
    f.progress = d.progress = 0.4
    assert token_counts(dynamic, x) == [65, 33, 17, 9]
    fixed(x)
    assert all(torch.equal(f.choices[b], d.choices[b]) for b in f.choices)
    assert d.measured == 0.5


def test_dynamic_simprune_drops_the_batch_mean_of_what_each_image_would():
    model, x = vit(), views()
    pruner = tokens.apply(model, "simprune", dynamic=True, blocks=(1,))
    # image 0 (rows 0 and 2 of [A; B]) rejects every candidate, image 1 none: each drops half the window
    pruner.gates["1"].forward = lambda t: torch.tensor([-4.0, 4.0, -4.0, 4.0])[:, None].expand(t.shape[:2])
    assert token_counts(model, x) == [65, 49, 49, 49]
    assert pruner.measured == 48 / 64


def test_the_sparsity_penalty_teaches_the_gate_to_drop():
    model, x = vit(), views()
    pruner = tokens.apply(model, "simprune", dynamic=True, sparsity=10.0)
    optimizer = torch.optim.SGD(pruner.parameters(), lr=1.0)
    for _ in range(10):
        loss = model(x).square().mean() + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model(x)
    assert pruner.measured < 0.75


def test_dynamic_simprune_settings_are_checked():
    with pytest.raises(isoprune.IsopruneError, match="dynamic variant is SimPrune"):
        tokens.TokenConfig("tome", dynamic=True)
    with pytest.raises(isoprune.IsopruneError, match="candidates"):
        tokens.TokenConfig("simprune", dynamic=True, candidates=1.0)
    teacher, student = vit(), vit()
    t, s = tokens.apply(teacher, "simprune", dynamic=True), tokens.apply(student, "simprune", dynamic=True)
    with pytest.raises(isoprune.IsopruneError, match="cannot replay"):
        s.follow(t)
    twin = copy.deepcopy(student)
    assert tokens.pruner_of(twin).gates["1"].down.weight is not s.gates["1"].down.weight
