"""Any ratios on the tiny models give a working model with no group pruned to nothing."""
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import isoprune
from conftest import TINY, inputs_for, make

ratio = st.floats(min_value=0.0, max_value=0.95)


@pytest.mark.parametrize("name", TINY)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(emb=ratio, heads=ratio, head_dim=ratio, mlp=ratio, default=ratio,
       scope=st.sampled_from(isoprune.SCOPES), round_to=st.sampled_from([None, 2, 4]))
def test_random_ratios_always_give_a_working_model(name, emb, heads, head_dim, mlp, default, scope, round_to):
    model = make(name)
    x = inputs_for(model, batch=1)
    ratios = isoprune.Ratios(emb=emb, heads=heads, head_dim=head_dim, mlp=mlp, default=default)
    groups = [g for iso in isoprune.isomorphic_groups(model, x) for g in iso.groups]
    assume(not ratios.largest() or any(ratios.for_group(g)[0] for g in groups))  # else an error by design (mlp=0.5 on a ResNet)
    isoprune.prune(model, ratios, scope=scope, round_to=round_to)
    assert all(len(g.keep) >= 1 for g in model.isoprune_plan.groups)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 10) and torch.isfinite(out).all()


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=50))
def test_distinct_is_numpy_unique(values):
    import numpy as np

    from isoprune._cut import distinct

    arr = np.asarray(values, dtype=np.int64)
    assert distinct(arr).tolist() == np.unique(arr).tolist()
