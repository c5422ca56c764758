"""The three ranking scopes do what they say."""
import torch

import isoprune
from conftest import make


def shares(plan, kind):
    return [len(g.keep) / g.channels for g in plan.groups if g.kind == kind]


def test_local_keeps_the_same_share_of_every_group():
    plan = isoprune.plan(make("test_resnet"), 0.5, scope="local")
    for g in plan.groups:
        assert len(g.keep) == g.channels - int(0.5 * g.channels)


def test_isomorphic_prunes_each_class_by_its_own_ratio_unevenly_across_members():
    model = make("deit_tiny_patch16_224")
    plan = isoprune.plan(model, isoprune.Ratios(mlp=0.5, heads=0.5), scope="isomorphic")
    mlp = [g for g in plan.groups if g.kind == "mlp"]
    assert sum(len(g.keep) for g in mlp) == sum(g.channels for g in mlp) // 2
    assert len(set(shares(plan, "mlp"))) > 1  # ranked across layers, not per layer
    assert sum(len(g.keep) for g in plan.groups if g.kind == "heads") == 12 * 3 // 2


def test_global_ranks_across_isomorphic_classes_of_a_kind():
    model = make("resnet50")
    iso = isoprune.plan(model, 0.5, scope="isomorphic")
    glob = isoprune.plan(model, 0.5, scope="global")
    total = sum(g.channels for g in glob.groups)
    assert sum(len(g.keep) for g in glob.groups) == total - int(0.5 * total)
    per_class = {}
    for g in iso.groups:
        per_class.setdefault(g.signature, [0, 0])
        per_class[g.signature][0] += len(g.keep)
        per_class[g.signature][1] += g.channels
    # isomorphic: every class loses (about) half; global: classes lose different shares
    assert all(abs(k / n - 0.5) <= 1 / n for k, n in per_class.values())
    glob_class = {}
    for g in glob.groups:
        glob_class.setdefault(g.signature, [0, 0])
        glob_class[g.signature][0] += len(g.keep)
        glob_class[g.signature][1] += g.channels
    assert len({round(k / n, 2) for k, n in glob_class.values()}) > 1


def test_global_ranks_a_vits_kinds_against_each_other():
    """One ratio for every kind: isomorphic scope removes half of each kind; global ranks heads,
    head dims, MLP channels and embedding dims together, so the kinds lose different shares."""
    model = make("test_vit")

    def shares(plan):
        kept, total = {}, {}
        for g in plan.groups:
            kept[g.kind] = kept.get(g.kind, 0) + len(g.keep)
            total[g.kind] = total.get(g.kind, 0) + g.channels
        return {kind: 1 - kept[kind] / total[kind] for kind in total}

    iso, glob = shares(isoprune.plan(model, 0.5)), shares(isoprune.plan(model, 0.5, scope="global"))
    assert all(abs(share - 0.5) < 0.05 for share in iso.values()), iso
    assert max(glob.values()) - min(glob.values()) > 0.1, glob


def test_name_and_signature_overrides():
    model = make("test_vit")
    mlp_sig = next(i.signature for i in isoprune.isomorphic_groups(model) if i.kind == "mlp")
    ratios = isoprune.Ratios(mlp=0.5, overrides={"blocks.0.mlp.fc1": 0.0, "re:blocks\\.1\\.": 0.25})
    plan = isoprune.plan(model, ratios)
    mlp = {g.root: g for g in plan.groups if g.kind == "mlp"}
    assert len(mlp["blocks.0.mlp.fc1"].keep) == 192
    assert len(mlp["blocks.1.mlp.fc1"].keep) == 144
    plan = isoprune.plan(model, isoprune.Ratios(mlp=0.5, overrides={mlp_sig: 0.75}))
    assert sum(len(g.keep) for g in plan.groups if g.kind == "mlp") == 6 * 192 // 4


def test_no_group_is_pruned_to_nothing():
    plan = isoprune.plan(make("test_resnet"), 0.99, scope="global")
    assert all(len(g.keep) >= 1 for g in plan.groups)


def test_a_ranking_takes_the_lowest_units_but_leaves_every_group_its_floor():
    from isoprune._groups import Group
    from isoprune._plan import _select

    pool = [Group(0, "channels", "s", "a", 4, []), Group(1, "channels", "s", "b", 4, [])]
    scores = {0: torch.tensor([0.2, 0.1, 0.4, 0.3], dtype=torch.float64), 1: torch.tensor([1.0, 4.0, 2.0, 3.0], dtype=torch.float64)}
    assert _select(pool, scores, 0.25, None) == {0: [2, 3], 1: [0, 1, 2, 3]}
    assert _select(pool, scores, 0.75, None) == {0: [2], 1: [1]}  # the first group keeps one, the second loses more
    assert _select(pool, scores, 0.75, 2) == {0: [2, 3], 1: [1, 3]}  # each keeps round_to: fewer go than asked
    assert _select(pool, scores, 0.375, 2) == {0: [2, 3], 1: [0, 1, 2, 3]}  # the second's one removal is restored
    assert _select(pool, scores, 0.25, 4) == {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}
