"""The engine runs that produce each case: inputs, state and expected outputs.

Every case is computed the same way:

1. build the engine objects in float64 and draw their state from the case's own generator
   (``default_rng(seed)``; the seed is derived from the case id) and from the rule's
   ``attach`` (the engine's own feedback initialisation);
2. round every floating-point input and state array to the case dtype
   (:func:`quantise`), in place, so the stored float32 inputs are exactly what the float64
   engine computes with;
3. run the engine in float64 (the expected outputs are the float64 answer for the stored
   inputs, then stored in the case dtype) and read inputs and outputs back under the
   names of ``docs/crosscheck.md``.

Per-step randomness (brSF's ``M_t``, WM's noise) is drawn here, stored as arrays and
handed to the engine's rule (brSF: its per-step cache; WM: its ``noise`` method), so a
case never depends on reproducing the engine's random streams.

Naming: engine state ``feedback_X`` is stored as ``X`` (``feedback_mask_R`` -> ``mask_R``);
the engine's stream keys and counters (``feedback_key``, ``feedback_draws``,
``feedback_mirror_count``) and BatchNorm's ``num_batches_tracked`` are not case state.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..functional.loss import softmax_cross_entropy
from ..nn.layers import BatchNorm1d, BatchNorm2d, Conv2d, Linear, WeightLayer
from ..nn.models import MLP, finalize, init_model, weight_layers
from ..nn.module import BackwardContext
from ..nn.resnet import BasicBlock, CifarResNet
from ..optim import build_optimizer
from ..rules import attach_rules, make_rule

#: state that belongs to the engine's random streams or counters, never to a case
_INTERNAL = ("feedback_key", "feedback_draws", "feedback_mirror_count", "num_batches_tracked")
#: classes of DFA's output error ``e`` in layer, module and trajectory cases
NUM_CLASSES = 3


# ------------------------------------------------------------------------------ arrays
def quantise(a, dtype: str):
    """``a`` rounded to ``dtype`` and back to float64 (a new array; ints/bools unchanged)."""
    a = np.asarray(a)
    if a.dtype.kind != "f":
        return a.copy()
    return a.astype(dtype).astype(np.float64)


def quantise_module(module, dtype: str) -> None:
    """Round every float parameter and buffer of ``module`` to ``dtype``, in place."""
    for _, m in module.named_modules():
        for p in m._params.values():
            p.data[...] = quantise(p.data, dtype)
        for b in m._buffers.values():
            if b is not None and getattr(b, "dtype", None) is not None and b.dtype.kind == "f":
                b[...] = quantise(b, dtype)


def stored(a, dtype: str) -> np.ndarray:
    """An array as stored in a case: C-contiguous, float arrays in the case dtype."""
    a = np.asarray(a)
    if a.dtype.kind == "f":
        a = a.astype(dtype)
    return np.ascontiguousarray(a)


def case_name(engine_name: str) -> str:
    """``feedback_R`` -> ``R``; ``conv1.feedback_mask`` -> ``conv1.mask``."""
    head, _, last = engine_name.rpartition(".")
    last = last[len("feedback_"):] if last.startswith("feedback_") else last
    return f"{head}.{last}" if head else last


def module_state(module, prefix: str = "") -> "OrderedDict[str, np.ndarray]":
    """Parameters and buffers of ``module`` under case names (internal counters dropped)."""
    out = OrderedDict()
    for name, value in module.state_dict().items():
        if name.rpartition(".")[2] in _INTERNAL or value is None:
            continue
        out[prefix + case_name(name)] = np.array(value)
    return out


def module_grads(module) -> "OrderedDict[str, np.ndarray]":
    """``grad.<case name>`` of every parameter that received a gradient."""
    return OrderedDict((f"grad.{case_name(n)}", np.array(p.grad))
                       for n, p in module.named_parameters() if p.grad is not None)


# ------------------------------------------------------------------------------ layers
def make_layer(spec: dict) -> WeightLayer:
    """A float64 Linear/Conv2d from a layer spec (``docs/crosscheck.md``)."""
    if spec["layer"] == "linear":
        layer = Linear(spec["in_features"], spec["out_features"], bias=spec["bias"],
                       dtype="float64")
    else:
        layer = Conv2d(spec["in_channels"], spec["out_channels"], tuple(spec["kernel_size"]),
                       tuple(spec["stride"]), tuple(spec["padding"]), bias=spec["bias"],
                       dtype="float64")
    layer.qualname = "layer"
    return layer


def attach_one(layer, rule: str, options: dict, seed: int, index: int,
               input_shape=None, num_classes: int = NUM_CLASSES) -> None:
    """Attach ``rule`` to one weight layer outside a model (``attach_rules`` does this for
    models; a lone layer's ``num_classes`` would be its own out features)."""
    r = make_rule(rule, **options)
    r.bind(layer, {"num_classes": num_classes, "input_shape": input_shape,
                   "layer_index": index, "seed": seed})
    r.attach(layer, np.random.default_rng([seed, 1, index]))
    layer.rule = r


def _init_weight_layer(layer, rng) -> None:
    layer.reset_parameters(rng)
    if layer.bias is not None:  # a non-zero bias, so a missing one is caught
        layer.bias.data[...] = 0.1 * rng.standard_normal(layer.bias.data.shape)


def inject_draws(layers, draws: dict) -> None:
    """Hand brSF its stored draw ``M_t`` for the current step (its per-step cache)."""
    for name, layer in layers.items():
        if name in draws:
            t = int(np.asarray(layer.feedback_draws))
            layer.cache["brsf_M"] = (t, np.abs(draws[name]))


def begin_step(layers, dtype: str, shapes=None) -> dict:
    """``before_step`` of every layer's rule; brSF's draw of this step, quantised and
    injected. Returns ``{layer name: M_t}`` (float64, quantised)."""
    draws = {}
    for name, layer in layers.items():
        layer.rule.before_step(layer)
        if layer.rule.name == "brsf":
            t = int(np.asarray(layer.feedback_draws))
            draws[name] = quantise(layer.rule.draw(layer, t), dtype)
    inject_draws(layers, draws)
    return draws


def feedback_inputs(layer) -> "OrderedDict[str, np.ndarray]":
    """The rule's state arrays of one layer under case names (no weight/bias)."""
    return OrderedDict((k, v) for k, v in module_state(layer).items()
                       if k not in ("weight", "bias"))


def learned_feedback(layer):
    """``(case name, Parameter)`` of the layer's optimizer-learned feedback, or None."""
    for name in ("feedback_B", "feedback_R"):
        p = layer._params.get(name)
        if p is not None:
            return case_name(name), p
    return None


def run_layer(rule, options, spec, dtype, seed, x_shape, scale_w=1.0):
    """Kind ``layer``: one forward and one backward pass. Returns (inputs, expected)."""
    rng = np.random.default_rng(seed)
    layer = make_layer(spec)
    _init_weight_layer(layer, rng)
    attach_one(layer, rule, options, seed, 0, input_shape=tuple(x_shape[1:]))
    layer.weight.data *= scale_w  # W_t != W_0: norm="init" and "sn" then differ
    quantise_module(layer, dtype)
    layers = {"layer": layer}
    draws = begin_step(layers, dtype)
    x = quantise(rng.standard_normal(x_shape), dtype)
    y = np.array(layer.forward(x))
    delta = quantise(rng.standard_normal(y.shape), dtype)
    e = quantise(rng.standard_normal((x_shape[0], NUM_CLASSES)) / x_shape[0], dtype)
    inputs = OrderedDict(x=x, weight=np.array(layer.weight.data))
    if layer.bias is not None:
        inputs["bias"] = np.array(layer.bias.data)
    inputs["grad_output"] = delta
    if rule == "dfa":
        inputs["output_error"] = e
    inputs.update(feedback_inputs(layer))
    if "layer" in draws:
        inputs["M_t"] = draws["layer"]
    grad_in = layer.backward(delta, BackwardContext(output_error=e))
    expected = OrderedDict(output=y, grad_input=np.array(grad_in),
                           grad_weight=np.array(layer.weight.grad))
    if layer.bias is not None:
        expected["grad_bias"] = np.array(layer.bias.grad)
    learned = learned_feedback(layer)
    if learned is not None:
        expected[f"grad_{learned[0]}"] = np.array(learned[1].grad)
    return inputs, expected


# ------------------------------------------------------------------------------ WM mirror
def feed_noise(layer, noise) -> None:
    """Make WM's mirror use the stored noise images ``noise[t - 1]`` at its step ``t``
    (counted from the layer's mirror count at this call)."""
    start = int(np.asarray(layer.feedback_mirror_count))
    layer.rule.noise = lambda _layer, t: noise[t - start - 1]


def run_mirror(options, spec, dtype, seed, x_shape):
    """Kind ``mirror``: WM's mirror phase with stored noise. Returns (inputs, expected)."""
    rng = np.random.default_rng(seed)
    layer = make_layer(spec)
    _init_weight_layer(layer, rng)
    attach_one(layer, "wm", options, seed, 0)
    quantise_module(layer, dtype)
    steps = layer.rule.options["mirror_steps"]
    n_m = layer.rule.options["mirror_batch"] or x_shape[0]
    noise = quantise(layer.rule.options["noise_std"] *
                     rng.standard_normal((steps, n_m) + tuple(x_shape[1:])), dtype)
    inputs = OrderedDict(weight=np.array(layer.weight.data), B=np.array(layer.feedback_B),
                         noise=noise)
    feed_noise(layer, noise)
    layer.rule.after_step(layer)
    return inputs, OrderedDict(B=np.array(layer.feedback_B))


# ------------------------------------------------------------------------------ trajectories
def run_trajectory(rule, options, spec, dtype, seed, x_shape, optimizer: dict, lr, wd):
    """Kind ``trajectory``: ``len(lr)`` optimizer steps of one layer (docs/crosscheck.md
    gives the order of operations). Returns (inputs, expected)."""
    rng = np.random.default_rng(seed)
    layer = make_layer(spec)
    _init_weight_layer(layer, rng)
    attach_one(layer, rule, options, seed, 0, input_shape=tuple(x_shape[1:]))
    quantise_module(layer, dtype)
    inputs = OrderedDict(weight=np.array(layer.weight.data))
    if layer.bias is not None:
        inputs["bias"] = np.array(layer.bias.data)
    inputs.update(feedback_inputs(layer))
    opts = {k: v for k, v in optimizer.items() if k != "name"}
    opt = build_optimizer(optimizer["name"], list(layer.named_parameters()), lr=float(lr[0]),
                          **opts)
    layers = {"layer": layer}
    learned = learned_feedback(layer)
    wm = layer.rule.name == "wm"
    per_step = {k: [] for k in ("x", "grad_output", "output_error", "M_t", "noise")}
    out = {k: [] for k in ("weight", "bias", "grad_input")}
    fb_name = learned[0] if learned is not None else ("B" if wm else None)
    fb_out = []
    for t in range(len(lr)):
        opt.lr, opt.weight_decay = float(lr[t]), float(wd[t])
        draws = begin_step(layers, dtype)
        x = quantise(rng.standard_normal(x_shape), dtype)
        y = layer.forward(x)
        delta = quantise(rng.standard_normal(y.shape), dtype)
        e = quantise(rng.standard_normal((x_shape[0], NUM_CLASSES)) / x_shape[0], dtype)
        grad_in = layer.backward(delta, BackwardContext(output_error=e))
        opt.step()
        if wm:
            s, n_m = layer.rule.options["mirror_steps"], layer.rule.options["mirror_batch"]
            noise = quantise(layer.rule.options["noise_std"] * rng.standard_normal(
                (s, n_m or x_shape[0]) + tuple(x_shape[1:])), dtype)
            feed_noise(layer, noise)
            per_step["noise"].append(noise)
        layer.rule.after_step(layer)
        per_step["x"].append(x)
        per_step["grad_output"].append(delta)
        per_step["output_error"].append(e)
        if "layer" in draws:
            per_step["M_t"].append(draws["layer"])
        out["weight"].append(np.array(layer.weight.data))
        if layer.bias is not None:
            out["bias"].append(np.array(layer.bias.data))
        out["grad_input"].append(np.array(grad_in))
        if fb_name is not None:
            fb_out.append(np.array(learned[1].data if learned else layer.feedback_B))
    for k in ("x", "grad_output", "output_error", "M_t", "noise"):
        if per_step[k] and (k != "output_error" or rule == "dfa"):
            inputs[k] = np.stack(per_step[k])
    inputs["lr"] = np.asarray(lr, dtype=np.float64)
    inputs["weight_decay"] = np.asarray(wd, dtype=np.float64)
    expected = OrderedDict((k, np.stack(v)) for k, v in out.items() if v)
    if fb_name is not None:
        expected[fb_name] = np.stack(fb_out)
    return inputs, expected


# ------------------------------------------------------------------------------ modules
def _randomise_bn(module, rng) -> None:
    """Non-trivial gamma, beta and running statistics for every BatchNorm of ``module``."""
    for _, m in module.named_modules():
        if isinstance(m, (BatchNorm1d, BatchNorm2d)):
            c = m.num_features
            m.weight.data[...] = 1.0 + 0.2 * rng.standard_normal(c)
            m.bias.data[...] = 0.1 * rng.standard_normal(c)
            m.running_mean[...] = 0.1 * rng.standard_normal(c)
            m.running_var[...] = 1.0 + 0.3 * rng.random(c)


def _running_stats(module) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((k, v) for k, v in module_state(module).items()
                       if k.rpartition(".")[2] in ("running_mean", "running_var"))


def build_module(spec: dict):
    """A float64 BatchNorm1d/2d or BasicBlock from a module spec."""
    kind = spec["module"]
    if kind in ("batchnorm1d", "batchnorm2d"):
        cls = BatchNorm1d if kind == "batchnorm1d" else BatchNorm2d
        return cls(spec["num_features"], eps=spec["eps"], momentum=spec["momentum"],
                   dtype="float64")
    return BasicBlock(spec["in_planes"], spec["planes"], spec["stride"], spec["shortcut"],
                      dtype="float64")


def run_module(rule, options, spec, dtype, seed, x_shape):
    """Kind ``module``: forward + backward of a BatchNorm or BasicBlock for a given
    ``grad_output`` (its rule on every conv). Returns (inputs, expected)."""
    rng = np.random.default_rng(seed)
    module = build_module(spec)
    layers = weight_layers(module)
    for i, (name, layer) in enumerate(layers.items()):
        layer.qualname = name
        layer.reset_parameters(rng)
        attach_one(layer, rule, options, seed, i)
    _randomise_bn(module, rng)
    module.train(spec["training"])
    quantise_module(module, dtype)
    draws = begin_step(layers, dtype)
    x = quantise(rng.standard_normal(x_shape), dtype)
    inputs = OrderedDict(x=x)
    inputs.update(module_state(module))
    for name, M in draws.items():
        inputs[f"{name}.M_t"] = M
    y = np.array(module.forward(x))
    delta = quantise(rng.standard_normal(y.shape), dtype)
    e = quantise(rng.standard_normal((x_shape[0], NUM_CLASSES)) / x_shape[0], dtype)
    inputs["grad_output"] = delta
    if rule == "dfa":
        inputs["output_error"] = e
    grad_in = module.backward(delta, BackwardContext(output_error=e))
    expected = OrderedDict(output=y, grad_input=np.array(grad_in))
    expected.update(module_grads(module))
    expected.update(_running_stats(module))
    return inputs, expected


# ------------------------------------------------------------------------------ networks
def build_network(spec: dict, seed: int):
    """A float64 MLP or CIFAR ResNet from a network spec, named and initialised."""
    if spec["model"] == "mlp":
        model = MLP(spec["in_features"], tuple(spec["hidden"]), spec["num_classes"],
                    dtype="float64")
    else:
        model = CifarResNet(6 * spec["blocks_per_stage"] + 2, spec["num_classes"],
                            spec["in_channels"], spec["shortcut"], "float64",
                            widths=tuple(spec["widths"]))
    return init_model(finalize(model), seed)


def run_network(rule, options, spec, dtype, seed, x_shape):
    """Kind ``network``: loss and every gradient of one training-mode step (no update).
    Returns (inputs, expected)."""
    rng = np.random.default_rng(seed)
    model = build_network(spec, seed)
    for layer in weight_layers(model).values():
        if layer.bias is not None:
            layer.bias.data[...] = 0.1 * rng.standard_normal(layer.bias.data.shape)
    _randomise_bn(model, rng)
    attach_rules(model, dict(options, name=rule), seed, input_shape=tuple(x_shape[1:]))
    quantise_module(model, dtype)
    model.train(True)
    layers = weight_layers(model)
    draws = begin_step(layers, dtype)
    x = quantise(rng.standard_normal(x_shape), dtype)
    labels = rng.integers(0, spec["num_classes"], size=x_shape[0]).astype(np.int64)
    inputs = OrderedDict(x=x, labels=labels)
    inputs.update(module_state(model))
    for name, M in draws.items():
        inputs[f"{name}.M_t"] = M
    logits = model.forward(x)
    loss, e = softmax_cross_entropy(logits, labels)
    model.backward(e, BackwardContext(output_error=e))
    expected = OrderedDict(logits=np.array(logits), loss=np.array(loss))
    expected.update(module_grads(model))
    expected.update(_running_stats(model))
    return inputs, expected
