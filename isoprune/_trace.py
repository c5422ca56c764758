"""Tracing on a weightless copy of the model.

The dependency graph only needs shapes, so it is built on a *meta skeleton*: the model's module
tree with every parameter and buffer replaced by a meta tensor of the same shape. Building it
copies no weights and runs no real compute, and pruning the skeleton tells us the exact shapes,
MACs and params of the pruned model before the real one is touched.
"""
from __future__ import annotations

import contextlib
import gc
import types
import warnings
from typing import Sequence

import torch
import torch_pruning as tp
from timm.layers import CondConv2d
from torch import nn

from . import _arch, _cut, _shapes
from ._cut import one_input_per_group
from ._errors import IsopruneError, first_line, on_command_line

Inputs = torch.Tensor | Sequence[torch.Tensor]


@contextlib.contextmanager
def gc_paused():
    """Cyclic garbage collection paused while it runs (as a ``with`` block or a decorator).
    Tracing and grouping make hundreds of thousands of short-lived objects, and every full
    collection they trigger walks all the objects the process holds (millions once torch and timm
    are loaded): that was a quarter of the time DeiT-B took to prune. What they leave in cycles is
    collected once the pause ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _compiled(model) -> bool:
    """Whether ``model`` is ``torch.compile``'s wrapper (its class is not imported for this: that
    would import dynamo)."""
    return type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module)


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``'s and data parallel wrappers, whose weights are the
    model's under a prefix (``_orig_mod.``, ``module.``)."""
    while True:
        if _compiled(model):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def require_module(model) -> None:
    """An error, saying how to make one, where ``model`` is not a torch module (a model's name,
    say), or what to give instead of a compiled one: its forward cannot be traced on the meta
    device, and its compiled graphs hold the widths it had."""
    if _compiled(model):
        raise IsopruneError("this model is compiled (torch.compile)",
                            hint="prune the model it wraps (model._orig_mod), then compile the pruned model")
    if isinstance(model, nn.Module):
        return
    hint = f"build it first: isoprune.create_model({model!r}) or timm.create_model" if isinstance(model, str) else "pass a torch nn.Module"
    raise IsopruneError(f"expected a model (a torch nn.Module), not {type(model).__name__} {str(model)[:60]!r}", hint=hint)


def meta_skeleton(model: nn.Module) -> nn.Module:
    """The model's module tree with every parameter and buffer a meta tensor of its shape.
    Every parameter of the skeleton requires grad, frozen or not in the model: the tracer
    follows autograd, and a frozen first layer would record no op (nor would the layers before the
    first that requires grad), so it would fall out of the graph and never be cut."""
    require_module(model)
    skeleton = clone(model)
    meta: dict[int, torch.Tensor] = {}  # one meta tensor per tensor: tied weights stay tied
    for m in skeleton.modules():
        for tensors in (m._parameters, m._buffers):
            for name, t in tensors.items():
                if t is not None and id(t) not in meta:
                    empty = torch.empty_like(t, device="meta")
                    meta[id(t)] = nn.Parameter(empty) if isinstance(t, nn.Parameter) else empty
                tensors[name] = None if t is None else meta[id(t)]
    return skeleton


def _copies(value, new_of: dict):
    """``value`` with the modules it holds (directly or in a list, tuple or dict) swapped for their
    copies, and a method bound to one bound to its copy (FasterNet's partial convolution picks
    its forward so); a plain container is always copied."""
    if isinstance(value, nn.Module):
        return new_of.get(id(value), value)
    if isinstance(value, types.MethodType) and id(value.__self__) in new_of:
        return types.MethodType(value.__func__, new_of[id(value.__self__)])
    if type(value) in (list, tuple):
        return type(value)(_copies(v, new_of) for v in value)
    if isinstance(value, dict):
        copied = value.copy()
        for k, v in value.items():
            if isinstance(v, (nn.Module, list, tuple, dict)):
                copied[k] = _copies(v, new_of)
        return copied
    return value.copy() if isinstance(value, (list, set)) else value


def clone(skeleton: nn.Module) -> nn.Module:
    """A copy of a module tree to cut, a tenth of what ``copy.deepcopy`` costs. Every
    module is new and has its own attributes and containers (parameters, buffers, submodules,
    hooks, and any list, dict or set), and modules it refers to outside its submodules (a list of
    blocks, say) are their copies. Tensors and other objects are shared with the original: cutting
    replaces a parameter rather than changing it, meta tensors hold nothing to change, and
    ``meta_skeleton`` swaps every parameter and buffer of its copy for a meta tensor."""
    new_of: dict[int, nn.Module] = {}
    order = []
    for m in skeleton.modules():
        new = object.__new__(type(m))
        new.__dict__.update(m.__dict__)
        new_of[id(m)] = new
        order.append(new)
    for new in order:
        for key, value in new.__dict__.items():
            if isinstance(value, (nn.Module, list, tuple, dict, set, types.MethodType)):
                new.__dict__[key] = _copies(value, new_of)
    return new_of[id(skeleton)]


def _embedding(model: nn.Module) -> nn.Module | None:
    return next((getattr(model, name) for name in ("patch_embed", "pixel_embed", "stem") if hasattr(model, name)), None)


def fixed_size(model: nn.Module) -> tuple[int, int] | None:
    """The image size a model takes and no other: its patch embedding's, where that checks its
    input's size (timm builds ViTs, Swin, CaiT... for one size unless told ``img_size`` or
    ``dynamic_img_size``); None for a model that takes any size."""
    embed = _embedding(model)
    img = getattr(embed, "img_size", None)
    if img is None or not getattr(embed, "strict_img_size", True) or getattr(embed, "dynamic_img_size", False):
        return None
    return (int(img[0]), int(img[1]))


def input_size(model: nn.Module) -> tuple[int, int, int]:
    """The input size the model was built for: its patch embedding's image size where that is
    the only one it takes (a ViT built with ``img_size=32`` accepts nothing else, whatever its
    pretrained config says), or that takes any but was not saved at one (``_io.adopt_input_size``);
    else the image size the model keeps (MaxViT, CoAtNet: their position biases are sized for it)
    with the channels of timm's pretrained config, else that config (a saved model's records the
    size it was pruned or trained at), else ImageNet's 3x224x224. (TNT calls its patch
    embedding ``pixel_embed``, MLP-Mixer ``stem``; a hybrid ViT's embedding takes the image into
    its CNN backbone, whose first convolution says the channels.)"""
    embed = _embedding(model)
    img = getattr(embed, "img_size", None)
    first = next((m for m in embed.modules() if isinstance(m, nn.modules.conv._ConvNd)), None) if img is not None else None
    if first is not None and (fixed_size(model) is not None or "isoprune_input_size" not in model.__dict__):
        return (first.in_channels, int(img[0]), int(img[1]))
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = tuple(int(s) for s in cfg.get("input_size", (3, 224, 224)))
    img = model.__dict__.get("img_size")
    img = (img, img) if isinstance(img, int) else img
    if isinstance(img, (tuple, list)) and len(img) == 2 and all(isinstance(s, int) for s in img):
        return (size[0], *img)
    return size


def meta_inputs(model: nn.Module, example_inputs: Inputs | None = None, size: Sequence[int] | None = None) -> Inputs:
    """Example inputs on the meta device, shaped like the user's, else one image of ``size`` or of
    the model's ``input_size``, in its weights' dtype (a half-precision model takes half-precision
    images)."""
    if example_inputs is None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
        return torch.empty((1, *(size or input_size(model))), device="meta", dtype=dtype)
    if isinstance(example_inputs, torch.Tensor):
        return torch.empty_like(example_inputs, device="meta")
    return tuple(torch.empty_like(t, device="meta") for t in example_inputs)


def forward(model: nn.Module, inputs: Inputs):
    """Run the model (on the meta skeleton: work out its shapes, see ``_shapes``)."""
    with _shapes.shapes():
        return model(inputs) if isinstance(inputs, torch.Tensor) else model(*inputs)


def _unmap_foreign_expands(graph: tp.DependencyGraph) -> None:
    """Torch-Pruning reads every 5-d ``expand`` as a language model's grouped-query attention and
    maps channels through it as key/value heads repeated. Vision models expand 5-d tensors along
    other axes (Twins, GC ViT, Hiera: a batch or window axis), where that reading finds fewer
    output channels than input ones (a repeat of 0) and divides by zero; there the channels pass
    through unchanged. The expand is marked so that Torch-Pruning, which redoes its index mappings
    for every group, leaves it so."""
    from torch_pruning import ops
    from torch_pruning.dependency import constants, index_mapping

    for node in graph.module2node.values():
        for dep in node.dependencies:
            for i, mapping in enumerate(dep.index_mapping):
                if isinstance(mapping, index_mapping._GQAIndexMapping) and mapping.repeat < 1:
                    dep.index_mapping[i] = constants.INDEX_MAPPING_PLACEHOLDER
                    expand = node if node.type == ops.OPTYPE.EXPAND else dep.target
                    expand.enable_index_mapping = False


def _map_marked(graph: tp.DependencyGraph) -> None:
    """Map the channels of the splits, concatenations and flattens trace forwards marked
    (``_arch.split_channels``, ``_arch.concat_channels``, ``_arch.flatten_channels``) with the
    widths they had. Torch-Pruning looks for a split's widths under a name torch no longer uses,
    and then, as for every concatenation, infers each part's width from the layers around it,
    which fails where the parts go through attention before they reach one (it found negative
    offsets); it infers a flatten's only where every linear layer's output is 2-d (not in a ViT)."""
    marked = {id(f) for f in _arch.channel_splits}
    concats = {id(out): (parts, widths) for out, parts, widths in _arch.channel_concats}
    flattens = {id(out): stride for out, stride in _arch.channel_flattens}
    for node in graph.module2node.values():
        if node.type == tp.ops.OPTYPE.CONCAT and id(node.grad_fn) in concats:
            _map_concat(node, *concats[id(node.grad_fn)])
        if node.type == tp.ops.OPTYPE.SPLIT and id(node.grad_fn) in marked:
            _map_split(node)
        if node.type == tp.ops.OPTYPE.RESHAPE and id(node.grad_fn) in flattens:
            _map_flatten(node, flattens[id(node.grad_fn)])


def _map_flatten(node, stride: int) -> None:
    """Map channel ``c`` of a flatten's input onto ``c * stride`` up to ``c * stride + stride - 1``
    of its output. It is then no longer a reshape to Torch-Pruning, which would infer the mapping
    again (it redoes every mapping before it groups) from the layers around it."""
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

    for source in node.inputs:
        _map_part(node, source, 0, _FlattenIndexMapping(stride=stride, reverse=True), _FlattenIndexMapping(stride=stride, reverse=False))
    node.type = tp.ops.OPTYPE.ELEMENTWISE


def _cut_marked(graph: tp.DependencyGraph) -> tuple[list[nn.Module], list[nn.Module]]:
    """Uncouple the channels on either side of the transposes ``_arch.mix_tokens`` marked and of
    the sums ``_arch.held`` marked (the graph keeps its edges; only the couplings through them
    go), and return the layers no group may cut the outputs of: those whose outputs are tokens
    (they feed a transpose back to channels), and those whose outputs are held (not ``cut``)."""
    back = {id(fn) for _, fn in _arch.token_swaps}
    held = {id(fn) for fn in _arch.held_outputs}
    marked = back | held | {id(fn) for fn in _arch.ended_outputs} | {id(fn) for fn, _ in _arch.token_swaps}
    token_layers, held_layers = [], []
    for node in (node for node in graph.module2node.values() if id(node.grad_fn) in marked):
        node.dependencies = []
        for near in node.inputs + node.outputs:
            near.dependencies = [dep for dep in near.dependencies if dep.target is not node]
        if id(node.grad_fn) in back:
            token_layers += _layers_before(node)
        if id(node.grad_fn) in held:
            held_layers += _layers_before(node)
    return token_layers, held_layers


def _couple_multipliers(graph: tp.DependencyGraph) -> list[nn.Module]:
    """Couple each input channel of a convolution with as many groups as inputs and ``m`` outputs
    per group (FastViT's and PiT's downsampling, a depthwise convolution with a channel multiplier)
    to its group's outputs, ``m * i`` to ``m * i + m - 1``: one cannot go without the others, so
    the widths before and after it are one group. Returns the layers nearest before such
    convolutions, narrowest first: rooted there, that group has a unit per channel before."""
    from torch_pruning.dependency.dependency import Dependency
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

    before = []
    for node in list(graph.module2node.values()):
        conv = node.module
        if not isinstance(conv, nn.modules.conv._ConvNd) or conv.transposed or not one_input_per_group(conv) or conv.out_channels <= conv.in_channels:
            continue
        pruner = graph.get_pruner_of_module(conv)
        spread = conv.out_channels // conv.in_channels
        for trigger, handler, reverse in ((pruner.prune_in_channels, pruner.prune_out_channels, False),
                                          (pruner.prune_out_channels, pruner.prune_in_channels, True)):
            dep = Dependency(trigger, handler, source=node, target=node)
            dep.index_mapping[0] = _FlattenIndexMapping(stride=spread, reverse=reverse)
            node.dependencies.append(dep)
        before += _layers_before(node)
    return sorted(before, key=lambda layer: _arch._out_width(layer))


def _layers_before(node) -> list[nn.Module]:
    """The convolutions and linear layers nearest before ``node``, through any other ops."""
    found, seen, stack = [], set(), list(node.inputs)
    while stack:
        near = stack.pop()
        if near in seen:
            continue
        seen.add(near)
        if isinstance(near.module, (*_cut.CONVS, tp.ops.TORCH_LINEAR)):
            found.append(near.module)
        else:
            stack += near.inputs
    return found


_calls: dict[nn.Module, list] = {}
"""The autograd nodes each layer made while the graph was built. A layer called more than once
(CoaT's relative position encoding, one a stage, run by each of its blocks) is one graph node,
which holds the autograd node of one of its calls only."""


@contextlib.contextmanager
def _recording_calls(model: nn.Module):
    """Fill ``_calls`` while inside, from every layer (module without children) of ``model``."""

    def record(layer, inputs, out):
        if isinstance(out, torch.Tensor):
            _calls.setdefault(layer, []).append(out.grad_fn)

    hooks = [m.register_forward_hook(record) for m in model.modules() if next(m.children(), None) is None]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        _calls.clear()


def _made(node) -> list:
    """The autograd nodes of a graph node: every call's, for a layer."""
    return _calls.get(node.module, [node.grad_fn])


def _part_read(split, node) -> int:
    """Which part of a ``split`` (its autograd node) the graph node reads: the output number
    its own autograd node (of one of its calls) takes from the split's."""
    return next((nr for made in _made(node) for fn, nr in made.next_functions if fn is split), 0)


def _map_split(node) -> None:
    """Map a split's channels onto each node that reads one of its parts; a part can have several
    readers (a CSPNet block's input goes into its first convolution and its residual sum), where
    Torch-Pruning pairs the readers with the parts by position. It is then told to leave these
    mappings as they are (it redoes every mapping before it groups)."""
    from torch_pruning.dependency.index_mapping import _SplitIndexMapping

    fn = node.grad_fn
    sizes = list(getattr(fn, "_saved_split_sizes", ()))  # a split into given sizes, else into chunks
    if not sizes:
        width, size = fn._saved_self_sym_sizes[fn._saved_dim], fn._saved_split_size
        sizes = [min(size, width - start) for start in range(0, width, size)]
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    node.module.split_sizes, node.module.offsets = sizes, offsets
    for reader in node.outputs:  # mapping slot 0: where Torch-Pruning keeps a split's mappings
        i = _part_read(fn, reader)
        part = offsets[i : i + 2]
        _map_part(node, reader, 0, _SplitIndexMapping(offset=part, reverse=False), _SplitIndexMapping(offset=part, reverse=True))
    node.enable_index_mapping = False


def _map_part(node, other, slot: int, out, back) -> None:
    """Set the index mappings (in ``slot``) of the dependencies from a split or concatenation
    ``node`` to ``other``, which reads or makes one of its parts (``out``), and back (``back``)."""
    for dep in node.dependencies:
        if dep.target is other:
            dep.index_mapping[slot] = out
    for dep in other.dependencies:
        if dep.target is node:
            dep.index_mapping[slot] = back


def _map_concat(node, parts: list, widths: list[int]) -> None:
    """Map a concatenation's channels onto each input: the part whose autograd node it holds.
    The inputs are put in the parts' order, since Torch-Pruning, when it redoes its mappings,
    pairs them with the widths by position."""
    from torch_pruning.dependency.index_mapping import _ConcatIndexMapping

    offsets = [sum(widths[:i]) for i in range(len(widths) + 1)]
    node.module.concat_sizes, node.module.offsets = widths, offsets
    index = {id(part): i for i, part in enumerate(parts)}
    part_of = {id(source): next(index[id(made)] for made in _made(source) if id(made) in index) for source in node.inputs}
    node.inputs.sort(key=lambda source: part_of[id(source)])
    for source in node.inputs:  # mapping slot 1: where Torch-Pruning keeps a concatenation's mappings
        i = part_of[id(source)]
        part = offsets[i : i + 2]
        _map_part(node, source, 1, _ConcatIndexMapping(offset=part, reverse=True), _ConcatIndexMapping(offset=part, reverse=False))


@contextlib.contextmanager
def trace_forwards(model: nn.Module):
    """Modules with a registered trace forward run it while inside. It calls the same layers as
    the module's own forward, so the MACs counted through it are the model's (and where the own
    forward hides a layer from the counter, as EVA's ``F.linear`` on its qkv weight, more right)."""
    patched = []
    for m in model.modules():
        forward = _arch.trace_forward(m)
        if forward is not None:
            patched.append((m, m.__dict__.get("forward")))  # a forward the module picked for itself
            m.forward = types.MethodType(forward, m)
    try:
        yield
    finally:
        for m, own in patched:
            if own is None:
                del m.forward
            else:
                m.forward = own
        _arch.channel_splits.clear()
        _arch.channel_concats.clear()
        _arch.token_swaps.clear()
        _arch.held_outputs.clear()
        _arch.ended_outputs.clear()
        _arch.channel_flattens.clear()
        _arch.first_roots.clear()


def build_graph(skeleton: nn.Module, inputs: Inputs, ignored_params=()) -> tp.DependencyGraph:
    """The dependency graph; ``ignored_params`` join no group (we cut them ourselves). Modules
    with a registered trace forward are traced through it."""
    was_training = skeleton.training
    try:
        with trace_forwards(skeleton), _recording_calls(skeleton), torch.enable_grad(), warnings.catch_warnings(), _shapes.shapes():
            warnings.simplefilter("ignore")
            # a tuple of inputs: given one tensor, Torch-Pruning first calls the model on it unpacked
            # (a batch of one becomes one unbatched image, which some layers accept and count)
            example = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
            graph = tp.DependencyGraph()
            _cut.own_pruners(graph)
            graph = graph.build_dependency(skeleton, example, ignored_params=list(ignored_params), verbose=False)
            _map_marked(graph)  # while the marks are held
            graph.token_layers, graph.held_layers = _cut_marked(graph)
            marked_first = list(_arch.first_roots)
        graph.first_roots = _couple_multipliers(graph) + [m for m in marked_first if m in graph.module2node]
        _unmap_foreign_expands(graph)
        return graph
    except IsopruneError:
        raise
    except Exception as exc:  # tracing failures come from deep inside torch/Torch-Pruning
        raise _trace_failure(skeleton, inputs, exc) from exc
    finally:
        skeleton.train(was_training)


def _trace_failure(skeleton: nn.Module, inputs: Inputs, exc: Exception) -> IsopruneError:
    """What a failed trace says: the model's own error where it does not run on the inputs (the
    tracer's, from its second try with the inputs packed, would hide it), else that the tracer
    cannot follow this architecture."""
    name = type(skeleton).__name__
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            forward(clone(skeleton).eval(), inputs)
    except Exception as own:  # noqa: BLE001 - any failure here is the inputs'
        shapes = [list(t.shape) for t in ((inputs,) if isinstance(inputs, torch.Tensor) else inputs)]
        return IsopruneError(f"{name} does not run on inputs of shape {', '.join(map(str, shapes))}: {first_line(own)}",
                             hint="give an --input-size the model takes" if on_command_line() else "pass example_inputs shaped like the model's real input")
    return IsopruneError(f"could not trace {name}: {type(exc).__name__}: {exc}",
                         hint="the model runs on these inputs, but the tracer cannot follow its layers: please report the architecture")


def output_modules(graph: tp.DependencyGraph) -> list:
    """Layers whose output channels are the model's output, found by walking back from the
    graph's sinks through shape-keeping ops (the average of DeiT's two heads, flatten, ...).
    For a headless model this is its last norm, which keeps the embedding width."""
    found, seen = [], set()
    stack = [node for node in graph.module2node.values() if not node.outputs]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.type == tp.ops.OPTYPE.PARAMETER or node.module in graph._module2name:
            found.append(node.module)
        else:
            stack += node.inputs
    return found


def _total(m: nn.Module, counted: dict) -> int:
    return m.__flops__ if m in counted else sum(_total(child, counted) for child in m.children())


def _lstm_macs(lstm: nn.LSTM, inputs, _output) -> None:
    """Torch-Pruning's count of an LSTM's step (its ``rnn_flops``, per direction and layer) times
    the steps the LSTM ran: its tokens, all sequences'. Torch-Pruning's own multiplies by the
    length and width of the first sequence instead (Sequencer's LSTMs counted 14 times over)."""
    from torch_pruning.utils.op_counter import rnn_flops

    x = inputs[0].data if isinstance(inputs[0], nn.utils.rnn.PackedSequence) else inputs[0]
    step = 0
    for i in range(lstm.num_layers):
        step = rnn_flops(step, lstm, lstm.get_parameter(f"weight_ih_l{i}"), lstm.get_parameter(f"weight_hh_l{i}"), None)
        if lstm.bias:
            step += 2 * lstm.get_parameter(f"bias_ih_l{i}").shape[0]
    lstm.__flops__ += step * (x.numel() // x.shape[-1]) * (1 + lstm.bidirectional)


def _cond_conv_macs(conv: CondConv2d, inputs, output) -> None:
    """A ``CondConv2d``'s MACs: its convolution's, as Torch-Pruning counts a convolution's, and
    its experts' kernels (and biases) mixed for each sample, one multiply-add per expert and weight."""
    from torch_pruning.utils.op_counter import conv_flops_counter_hook

    conv_flops_counter_hook(conv, inputs, output)
    mixed = conv.weight[0].numel() + (conv.bias[0].numel() if conv.bias is not None else 0)
    conv.__flops__ += output.shape[0] * conv.num_experts * mixed


def _formula(m: nn.Module, formulas: dict):
    """Torch-Pruning's formula for a layer, by its type. Subclassed convolutions and linear
    layers (timm's weight-standardised and "same"-padded convolutions: NFNet, BiT, the TF
    EfficientNets) count as the layer they subclass; Torch-Pruning's counter finds none for them
    and counts nothing. Other subclasses (timm's LayerNorm) are left to their children, as
    Torch-Pruning counts them, so that the paper's figures stay as its counter made them."""
    formula = formulas.get(type(m))
    if formula is None and isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
        formula = next((formulas[t] for t in type(m).__mro__ if t in formulas), None)
    return formula


class Tally:
    """MACs per sample and params, filled in when ``counting`` ends."""

    macs: int = 0
    params: int = 0


@contextlib.contextmanager
def counting(model: nn.Module, inputs: Inputs):
    """Count the MACs of the forward passes run inside, in place: Torch-Pruning's per-layer
    formulas (the paper's figures come from its counter) hooked onto the model for the duration,
    so a trace can count as it goes and a throwaway copy need not be copied again. A layer the
    formulas know counts as a whole; inside any other, its sublayers add up."""
    from torch_pruning.utils import op_counter

    formulas = {**op_counter.MODULES_MAPPING, nn.LSTM: _lstm_macs, CondConv2d: _cond_conv_macs, **op_counter.CUSTOM_MODULES_MAPPING}
    counted = {m: f for m in model.modules() if (f := _formula(m, formulas)) is not None}
    calls = 0

    def called(*_):
        nonlocal calls
        calls += 1

    handles = [model.register_forward_hook(called)]
    for m, formula in counted.items():
        m.__flops__ = 0
        handles.append(m.register_forward_hook(formula))
    tally = Tally()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield tally
        batch = len(inputs if isinstance(inputs, torch.Tensor) else inputs[0])
        tally.macs = int(_total(model, counted) / max(calls * batch, 1))
        tally.params = sum(p.numel() for p in model.parameters())
    finally:
        for handle in handles:
            handle.remove()
        for m in counted:
            del m.__flops__


def count(skeleton: nn.Module, inputs: Inputs) -> tuple[int, int]:
    """(MACs, params) of a model in eval mode (a meta skeleton: nothing is computed) at these
    inputs; the model's modes are left as found."""
    modes = [(m, m.training) for m in skeleton.modules()]
    skeleton.eval()
    try:
        with counting(skeleton, inputs) as tally, torch.no_grad(), trace_forwards(skeleton):
            forward(skeleton, inputs)
    finally:
        for m, training in modes:
            m.training = training
    return tally.macs, tally.params
