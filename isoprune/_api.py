"""Read-only views of a model: its isomorphic groups and its size."""
from __future__ import annotations

from torch import nn

from . import _trace
from ._groups import IsomorphicGroup, analyse


def isomorphic_groups(model: nn.Module, example_inputs=None, labels: str = "structure") -> list[IsomorphicGroup]:
    """The model's isomorphic groups (signature, kind, member groups, channel counts)."""
    return analyse(model, example_inputs, labels).isomorphic()


def count(model: nn.Module, example_inputs=None) -> tuple[int, int]:
    """(MACs, params) at the model's input size, counted on a weightless copy."""
    return _trace.count(_trace.meta_skeleton(model), _trace.meta_inputs(model, example_inputs))
