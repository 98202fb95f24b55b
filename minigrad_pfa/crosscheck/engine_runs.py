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

import copy
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
    return np.array(a, order="C")  # (not ascontiguousarray: it makes a 0-d array 1-d)


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
def make_layer(spec: dict, dtype: str = "float64") -> WeightLayer:
    """A Linear/Conv2d from a layer spec (``docs/crosscheck.md``)."""
    if spec["layer"] == "linear":
        layer = Linear(spec["in_features"], spec["out_features"], bias=spec["bias"],
                       dtype=dtype)
    else:
        layer = Conv2d(spec["in_channels"], spec["out_channels"], tuple(spec["kernel_size"]),
                       tuple(spec["stride"]), tuple(spec["padding"]), bias=spec["bias"],
                       dtype=dtype)
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


def load_state(module, inputs: dict, prefix: str = "") -> None:
    """Copy a case's arrays into ``module``'s parameters and buffers (in place, by case
    name; the engine's stream keys and counters are left alone).

    Raises
    ------
    KeyError
        The case lacks an array the module has (names it).
    """
    for name, arr in module.state_dict().items():
        if name.rpartition(".")[2] in _INTERNAL or arr is None:
            continue
        key = prefix + case_name(name)
        if key not in inputs:
            raise KeyError(f"the case has no input {key!r} for the engine's {name!r}")
        arr[...] = inputs[key]


def begin_step(layers, inputs: dict, prefix_of=lambda name: "") -> None:
    """``before_step`` of every layer's rule, then brSF's stored draw ``M_t`` of this step
    handed to its per-step cache (``inputs[prefix + "M_t"]``)."""
    for name, layer in layers.items():
        layer.rule.before_step(layer)
        key = prefix_of(name) + "M_t"
        if layer.rule.name == "brsf":
            t = int(np.asarray(layer.feedback_draws))
            layer.cache["brsf_M"] = (t, np.abs(inputs[key]))


def draw_brsf(layers, dtype: str, prefix_of=lambda name: "") -> dict:
    """brSF's engine draw ``M_1`` of every brSF layer, quantised, under its input name."""
    return {prefix_of(name) + "M_t": quantise(layer.rule.draw(layer, 1), dtype)
            for name, layer in layers.items() if layer.rule.name == "brsf"}


def _dotted(name: str) -> str:
    return f"{name}."


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


def _context(inputs: dict) -> BackwardContext:
    return BackwardContext(output_error=inputs.get("output_error"))


def _new_draws(rng, dtype, shape, scale=1.0):
    return quantise(scale * rng.standard_normal(shape), dtype)


# ------------------------------------------------------------------------------ layer
def execute_layer(layer, inputs: dict) -> "OrderedDict[str, np.ndarray]":
    """Kind ``layer`` on a set-up layer: forward ``x``, backward ``grad_output``."""
    begin_step({"layer": layer}, inputs)
    y = layer.forward(inputs["x"])
    grad_in = layer.backward(inputs["grad_output"], _context(inputs))
    out = OrderedDict(output=np.array(y), grad_input=np.array(grad_in),
                      grad_weight=np.array(layer.weight.grad))
    if layer.bias is not None:
        out["grad_bias"] = np.array(layer.bias.grad)
    learned = learned_feedback(layer)
    if learned is not None:
        out[f"grad_{learned[0]}"] = np.array(learned[1].grad)
    return out


def _drawn_layer(rule, options, spec, dtype, rng, seed, x_shape, scale_w=1.0):
    layer = make_layer(spec)
    _init_weight_layer(layer, rng)
    attach_one(layer, rule, options, seed, 0, input_shape=tuple(x_shape[1:]))
    layer.weight.data *= scale_w  # W_t != W_0: norm="init" and "sn" then differ
    quantise_module(layer, dtype)
    inputs = OrderedDict(weight=np.array(layer.weight.data))
    if layer.bias is not None:
        inputs["bias"] = np.array(layer.bias.data)
    inputs.update(feedback_inputs(layer))
    return layer, inputs


def run_layer(rule, options, spec, dtype, seed, x_shape, scale_w=1.0):
    """Kind ``layer``: draw the state and inputs, then :func:`execute_layer`."""
    rng = np.random.default_rng(seed)
    layer, state = _drawn_layer(rule, options, spec, dtype, rng, seed, x_shape, scale_w)
    x = _new_draws(rng, dtype, x_shape)
    inputs = OrderedDict(x=x)
    inputs.update(state)
    inputs["grad_output"] = _new_draws(rng, dtype, layer.forward(x).shape)
    if rule == "dfa":
        inputs["output_error"] = _new_draws(rng, dtype, (x_shape[0], NUM_CLASSES),
                                            1.0 / x_shape[0])
    inputs.update(draw_brsf({"layer": layer}, dtype))
    return inputs, execute_layer(layer, inputs)


# ------------------------------------------------------------------------------ WM mirror
def feed_noise(layer, noise) -> None:
    """Make WM's mirror use the stored noise images ``noise[i]`` at its i-th next step."""
    start = int(np.asarray(layer.feedback_mirror_count))
    layer.rule.noise = lambda _layer, t: noise[t - start - 1]


def execute_mirror(layer, inputs: dict) -> "OrderedDict[str, np.ndarray]":
    """Kind ``mirror``: the mirror phase with the stored noise."""
    feed_noise(layer, inputs["noise"])
    layer.rule.after_step(layer)
    return OrderedDict(B=np.array(layer.feedback_B))


def _mirror_noise(layer, rng, dtype, x_shape):
    o = layer.rule.options
    shape = (o["mirror_steps"], o["mirror_batch"] or x_shape[0]) + tuple(x_shape[1:])
    return _new_draws(rng, dtype, shape, o["noise_std"])


def run_mirror(options, spec, dtype, seed, x_shape):
    """Kind ``mirror``: draw ``W``, ``B`` and the noise, then :func:`execute_mirror`."""
    rng = np.random.default_rng(seed)
    layer, inputs = _drawn_layer("wm", options, spec, dtype, rng, seed, x_shape)
    inputs["noise"] = _mirror_noise(layer, rng, dtype, x_shape)
    return inputs, execute_mirror(layer, inputs)


# ------------------------------------------------------------------------------ trajectories
_PER_STEP = ("x", "grad_output", "output_error", "M_t", "noise")


def execute_trajectory(layer, inputs: dict, optimizer: dict) -> "OrderedDict[str, np.ndarray]":
    """Kind ``trajectory``: ``len(lr)`` steps (order of operations in docs/crosscheck.md)."""
    lr, wd = inputs["lr"], inputs["weight_decay"]
    opts = {k: (tuple(v) if isinstance(v, list) else v)
            for k, v in optimizer.items() if k != "name"}
    opt = build_optimizer(optimizer["name"], list(layer.named_parameters()), lr=float(lr[0]),
                          **opts)
    learned = learned_feedback(layer)
    fb = learned[0] if learned is not None else ("B" if layer.rule.name == "wm" else None)
    out = OrderedDict((k, []) for k in ("weight", "bias", "grad_input", fb) if k)
    if layer.bias is None:
        del out["bias"]
    for t in range(len(lr)):
        step = {k: inputs[k][t] for k in _PER_STEP if k in inputs}
        opt.lr, opt.weight_decay = float(lr[t]), float(wd[t])
        begin_step({"layer": layer}, step)
        layer.forward(step["x"])
        grad_in = layer.backward(step["grad_output"], _context(step))
        opt.step()
        if "noise" in step:
            feed_noise(layer, step["noise"])
        layer.rule.after_step(layer)
        out["weight"].append(np.array(layer.weight.data))
        if layer.bias is not None:
            out["bias"].append(np.array(layer.bias.data))
        out["grad_input"].append(np.array(grad_in))
        if fb is not None:
            out[fb].append(np.array(learned[1].data if learned else layer.feedback_B))
    return OrderedDict((k, np.stack(v)) for k, v in out.items())


def run_trajectory(rule, options, spec, dtype, seed, x_shape, optimizer: dict, lr, wd):
    """Kind ``trajectory``: draw the initial state and every step's inputs, then
    :func:`execute_trajectory`."""
    rng = np.random.default_rng(seed)
    layer, inputs = _drawn_layer(rule, options, spec, dtype, rng, seed, x_shape)
    k = len(lr)
    inputs["x"] = _new_draws(rng, dtype, (k,) + tuple(x_shape))
    inputs["grad_output"] = _new_draws(rng, dtype, (k,) + layer.forward(inputs["x"][0]).shape)
    if rule == "dfa":
        inputs["output_error"] = _new_draws(rng, dtype, (k, x_shape[0], NUM_CLASSES),
                                            1.0 / x_shape[0])
    if rule == "brsf":
        inputs["M_t"] = np.stack([quantise(layer.rule.draw(layer, t + 1), dtype)
                                  for t in range(k)])
    if rule == "wm":
        inputs["noise"] = np.stack([_mirror_noise(layer, rng, dtype, x_shape)
                                    for _ in range(k)])
    inputs["lr"] = np.asarray(lr, dtype=np.float64)
    inputs["weight_decay"] = np.asarray(wd, dtype=np.float64)
    return inputs, execute_trajectory(layer, inputs, optimizer)


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


def _with_grads_and_stats(module, **first) -> "OrderedDict[str, np.ndarray]":
    """The named outputs ``first``, then every parameter's gradient, then the running
    statistics after the pass (the order of the report)."""
    out = OrderedDict((k, np.array(v)) for k, v in first.items())
    out.update(module_grads(module))
    out.update(_running_stats(module))
    return out


def build_module(spec: dict, dtype: str = "float64"):
    """A BatchNorm1d/2d or BasicBlock from a module spec, in ``spec["training"]`` mode."""
    kind = spec["module"]
    if kind in ("batchnorm1d", "batchnorm2d"):
        cls = BatchNorm1d if kind == "batchnorm1d" else BatchNorm2d
        module = cls(spec["num_features"], eps=spec["eps"], momentum=spec["momentum"],
                     dtype=dtype)
    else:
        module = BasicBlock(spec["in_planes"], spec["planes"], spec["stride"],
                            spec["shortcut"], dtype=dtype)
    for name, layer in weight_layers(module).items():
        layer.qualname = name
    return module.train(spec["training"])


def attach_module(module, rule, options, seed, num_classes=NUM_CLASSES) -> None:
    """The rule on every weight layer of a module (all compute their input error)."""
    for i, layer in enumerate(weight_layers(module).values()):
        attach_one(layer, rule, options, seed, i, num_classes=num_classes)


def execute_module(module, inputs: dict) -> "OrderedDict[str, np.ndarray]":
    """Kind ``module``: forward ``x``, backward ``grad_output`` (with ``output_error``)."""
    begin_step(weight_layers(module), inputs, _dotted)
    y = module.forward(inputs["x"])
    grad_in = module.backward(inputs["grad_output"], _context(inputs))
    return _with_grads_and_stats(module, output=y, grad_input=grad_in)


def run_module(rule, options, spec, dtype, seed, x_shape):
    """Kind ``module``: draw the state and inputs, then :func:`execute_module`."""
    rng = np.random.default_rng(seed)
    module = build_module(spec)
    for layer in weight_layers(module).values():
        layer.reset_parameters(rng)
    attach_module(module, rule, options, seed)
    _randomise_bn(module, rng)
    quantise_module(module, dtype)
    x = _new_draws(rng, dtype, x_shape)
    inputs = OrderedDict(x=x)
    inputs.update(module_state(module))
    probe = copy.deepcopy(module).eval()  # the output shape, without touching the stats
    inputs["grad_output"] = _new_draws(rng, dtype, probe.forward(x).shape)
    if rule == "dfa":
        inputs["output_error"] = _new_draws(rng, dtype, (x_shape[0], NUM_CLASSES),
                                            1.0 / x_shape[0])
    inputs.update(draw_brsf(weight_layers(module), dtype, _dotted))
    return inputs, execute_module(module, inputs)


# ------------------------------------------------------------------------------ networks
def build_network(spec: dict, seed: int, dtype: str = "float64"):
    """An MLP or CIFAR ResNet from a network spec, named and initialised, training mode."""
    if spec["model"] == "mlp":
        model = MLP(spec["in_features"], tuple(spec["hidden"]), spec["num_classes"],
                    dtype=dtype)
    else:
        model = CifarResNet(6 * spec["blocks_per_stage"] + 2, spec["num_classes"],
                            spec["in_channels"], spec["shortcut"], dtype,
                            widths=tuple(spec["widths"]))
    return init_model(finalize(model), seed).train(True)


def execute_network(model, inputs: dict) -> "OrderedDict[str, np.ndarray]":
    """Kind ``network``: loss and every gradient of one training-mode step (no update)."""
    begin_step(weight_layers(model), inputs, _dotted)
    logits = model.forward(inputs["x"])
    loss, e = softmax_cross_entropy(logits, inputs["labels"])
    model.backward(e, BackwardContext(output_error=e))
    return _with_grads_and_stats(model, logits=logits, loss=loss)


def run_network(rule, options, spec, dtype, seed, x_shape):
    """Kind ``network``: draw the state and inputs, then :func:`execute_network`."""
    rng = np.random.default_rng(seed)
    model = build_network(spec, seed)
    for layer in weight_layers(model).values():
        if layer.bias is not None:
            layer.bias.data[...] = 0.1 * rng.standard_normal(layer.bias.data.shape)
    _randomise_bn(model, rng)
    attach_rules(model, dict(options, name=rule), seed, input_shape=tuple(x_shape[1:]))
    quantise_module(model, dtype)
    inputs = OrderedDict(x=_new_draws(rng, dtype, x_shape),
                         labels=rng.integers(0, spec["num_classes"], size=x_shape[0]))
    inputs.update(module_state(model))
    inputs.update(draw_brsf(weight_layers(model), dtype, _dotted))
    return inputs, execute_network(model, inputs)
