"""Sequencer mixes tokens with bidirectional LSTMs, one along the columns and one along the rows
of the map, their outputs concatenated into a linear layer (``LSTM2d``). A hidden unit is a row of
each of the four gates, a column of the recurrent weights, in both directions, and an output of
each direction: ``_cut.LSTMCut`` cuts it so (Torch-Pruning's handler cut one gate's rows and
counted one direction's outputs), the group's outputs in two runs. On the meta device an LSTM runs
step by step, and the tracer followed every step: ``_zoo.lstm_trace`` stands in for it as one
layer. Its MACs are counted per token (``_trace._lstm_macs``)."""
import torch
from torch import nn

import isoprune
from conftest import assert_equivalent, assert_saved_and_applied_again, lively, make
from isoprune import _groups


def lstms(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.LSTM)}


def test_every_lstm_is_a_group_of_hidden_units_in_two_runs():
    model = make("sequencer_micro")
    analysis = _groups.analyse(model)
    assert analysis.frozen == {}
    found = {g.root: g for g in analysis.groups if g.root in lstms(model)}
    assert len(found) == 8
    assert all(g.blocks == 2 and g.channels == lstms(model)[root].hidden_size for root, g in found.items())
    assert all(("rnn_tokens.fc", "in") in [(n.rpartition("rnn_tokens.")[1] + n.rpartition("rnn_tokens.")[2], d) for n, d in g.members]
               for g in found.values())


def test_pruned_lstms_compute_what_the_zeroed_ones_do():
    """Zeroed: a removed unit's gate rows and recurrent column are zero, so it stays zero and
    moves no other unit; pruned, it is gone from both directions."""
    model = lively(make("sequencer_micro"))
    signatures = {g.signature for g in _groups.analyse(model).groups if g.root in lstms(model)}
    assert_equivalent(model, isoprune.Ratios(mlp=0.5, overrides=dict.fromkeys(signatures, 0.5)), scope="local", changes=0.01)
    for name, lstm in lstms(model).items():
        block = model.get_submodule(name.rpartition(".")[0])
        hidden = 4 if name.startswith("stages.0.") else 8
        assert lstm.hidden_size == block.hidden_size == hidden and block.output_size == 2 * hidden
        assert lstm.weight_ih_l0_reverse.shape == (4 * hidden, lstm.input_size) and lstm.weight_hh_l0.shape == (4 * hidden, hidden)
        assert block.fc.in_features == 4 * hidden


def test_a_hidden_unit_scores_its_gates_in_both_directions():
    """A unit's score counts its own weights (``member_tensors`` views each direction's gates):
    the unit whose backward gate rows are made large is kept, with one other of 16."""
    model = make("sequencer_micro")
    lstm = model.stages[1].blocks[0].rnn_tokens.rnn_v
    with torch.no_grad():
        lstm.weight_ih_l0_reverse.view(4, lstm.hidden_size, -1)[:, 5] *= 100
    analysis = _groups.analyse(model)
    group = next(g for g in analysis.groups if g.root == "stages.1.blocks.0.rnn_tokens.rnn_v")
    plan = isoprune.plan(model, isoprune.Ratios(default=0.0, mlp=0.0, overrides={group.signature: 0.9}), scope="local")
    keep = next(g for g in plan.groups if g.id == group.id).keep
    assert 5 in keep and len(keep) == 2


def test_a_map_taller_than_wide():
    """The trace joins the two LSTMs' outputs before it makes the map again: the columns' LSTM runs
    over sequences as long as the map is tall, the rows' as it is wide."""
    model = make("sequencer_micro")
    x = torch.randn(2, 3, 56, 42)
    assert _groups.analyse(model, x).frozen == {}
    isoprune.prune(model, 0.5, example_inputs=x)
    with torch.no_grad():
        assert model(x).shape == (2, 10)


def test_lstm_macs_count_every_token():
    lstm = nn.LSTM(16, 8, batch_first=True, bidirectional=True)
    # one step, one direction: the products with the input and the state, the gates' additions,
    # the cell's and the output's products (Torch-Pruning's rnn_flops), and the two biases
    step = 32 * 16 + 32 * 8 + 4 * 8 + 3 * 8 + 3 * 8 + 2 * 32
    assert isoprune.count(lstm, torch.randn(3, 5, 16))[0] == step * 5 * 2  # per sample: 5 tokens, 2 directions
    model = make("sequencer_micro")
    plan = isoprune.plan(model, 0.3)
    isoprune.apply_plan(model, plan)
    assert plan.macs["after"] == isoprune.count(model)[0] < plan.macs["before"]


def test_an_lstm_of_two_layers_is_left_whole():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.lstm, self.head = nn.Linear(4, 16), nn.LSTM(16, 8, num_layers=2, batch_first=True), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.lstm(self.embed(x))[0])

    analysis = _groups.analyse(Tokens(), torch.randn(2, 5, 4))
    assert "one-layer" in analysis.frozen["lstm"]


def test_a_pruned_model_and_its_plan_load_again(tmp_path):
    assert_saved_and_applied_again("sequencer_micro", 0.4, tmp_path)
