"""BioTorch 0.0.16 as a crosscheck adapter: its own layers (``biotorch.layers``) and
``BioModule`` run every case of the rules it has, fa, dfa, usf, frsf and brsf: single
Linear and Conv2d layers, SGD trajectories, BasicBlocks and whole MLP and ResNet steps
(PyTorch models converted by ``BioModule``, BatchNorm included).

Install: ``pip install --no-deps biotorch==0.0.16`` beside ``torch==2.13.0`` (its declared
dependencies pull torchvision, jupyter and more; the layers need only torch).

    minigrad-pfa crosscheck run --adapter minigrad_pfa.crosscheck.adapters.biotorch:adapter

How a case reaches BioTorch (its conventions, docs/crosscheck.md "Measured against
BioTorch 0.0.16")
-------------------------------------------------------------------------------------
* Feedback is stored where BioTorch keeps it, the layer's ``weight_backward`` Parameter
  (``requires_grad=False``): fa ``B``; dfa ``D`` (k, in) / (k, ic, kh, kw); frsf
  ``abs(M0)`` (BioTorch stores the magnitude; the case's ``M0`` is the engine's signed
  draw, whose magnitude is what both use). uSF has no state: BioTorch rebuilds
  ``scaling_factor * sign(W)`` at every forward, ``scaling_factor = sqrt(2/(fan_in +
  fan_out))`` in its default Xavier mode (the engine's ``s``).
* brSF: BioTorch redraws ``abs(xavier_uniform_) * sign(W)`` inside *every forward pass*
  from torch's global generator. The adapter replaces that one draw with the case's
  ``M_t`` (``torch.nn.init.xavier_uniform_`` is patched for the duration of the forward
  call only), so BioTorch's own code computes the rest. BioTorch allocates that draw in
  torch's *default* dtype (float32 even in a float64 model: ``M_t`` rounded to float32,
  input errors off by ~2e-8 relative); the adapter sets the default dtype to the case's
  during the forward call.
* DFA: the output error ``e`` is injected as BioTorch does, by setting the attribute
  ``loss_gradient`` of the layer (``BioModule.forward(x, targets, loss_function)`` computes
  ``e = d loss / d output`` and sets it on every module; the layer's backward hook then
  replaces its input gradient by ``e @ weight_backward``, or for conv the transposed
  convolution of ``e`` broadcast over the output grid). Whole-network DFA cases go
  through ``BioModule`` itself with the case's labels and ``F.cross_entropy``.
* Trajectories use ``torch.optim.SGD`` on the layer's ``weight`` and ``bias`` (BioTorch
  trains with a torch optimizer), learning rate and weight decay set per step.
* Blocks and networks are PyTorch modules with the engine's state-dict names (CIFAR
  BasicBlock with option A or B shortcuts, ``nn.BatchNorm2d``), converted by
  ``BioModule(model, mode=rule)`` exactly as a BioTorch user converts a model; every
  array of the case is loaded by its name afterwards.

Skipped (a reason per case): options BioTorch does not have (``feedback_density < 1``,
``norm``, ``batch_manhattan``, ``fixed_sign``, dfa ``conv="dense"``), ``const`` unless
``BioTorchAdapter(constrain_weights=True)`` (BioTorch's ``constrain_weights`` replaces the
weight Parameter inside ``forward``, so an optimizer built before keeps updating the old
tensor: run it to see the failure).
"""
from __future__ import annotations

import contextlib
import io
from collections import OrderedDict

import numpy as np

try:  # optional dependencies: the adapter reports a clear error without them
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None

INSTALL = "pip install torch==2.13.0 && pip install --no-deps biotorch==0.0.16"
RULES = ("fa", "dfa", "usf", "frsf", "brsf")
#: the engine's option values BioTorch can express (anything else is skipped)
_PLAIN = {"feedback_density": 1.0, "norm": None, "batch_manhattan": False,
          "fixed_sign": False, "conv": "conv"}


def _biotorch():
    """The BioTorch modules the adapter uses (an ImportError naming the install)."""
    if torch is None:
        raise ImportError(f"the BioTorch adapter needs torch and biotorch: {INSTALL}")
    try:
        from biotorch.layers import dfa, fa, frsf, usf, brsf
        from biotorch.module.biomodule import BioModule
    except ImportError:
        raise ImportError(f"the BioTorch adapter needs biotorch: {INSTALL}") from None
    return {"fa": fa, "dfa": dfa, "usf": usf, "frsf": frsf, "brsf": brsf,
            "BioModule": BioModule}


def T(a, requires_grad: bool = False):
    t = torch.from_numpy(np.array(a))
    return t.requires_grad_(True) if requires_grad else t


def out(t) -> np.ndarray:
    return t.detach().numpy().copy()


@contextlib.contextmanager
def default_dtype(dtype: str | None):
    """Run with torch's default dtype set to the case's (None: unchanged): BioTorch
    allocates brSF's draw with ``torch.Tensor(size)``, i.e. in the default dtype (float32),
    even in a float64 model, which rounds ``M_t`` to float32."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype) if dtype else before)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@contextlib.contextmanager
def injected_draws(draws: dict):
    """While active, brSF's per-forward draw (BioTorch calls ``torch.nn.init.xavier_uniform_``
    inside ``forward``) fills its tensor with ``draws[layer]`` for the layer running,
    instead of random numbers. ``draws`` maps BioTorch layers to arrays."""
    running = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: running.append(mod))
             for m in draws]
    real = torch.nn.init.xavier_uniform_

    def replay(tensor, gain=1.0, generator=None):
        if not running or running[-1] not in draws:
            raise RuntimeError("biotorch adapter: a brSF draw outside a layer with a "
                               "stored M_t")
        with torch.no_grad():
            tensor.copy_(T(draws[running[-1]]))
        return tensor

    torch.nn.init.xavier_uniform_ = replay
    try:
        yield
    finally:
        torch.nn.init.xavier_uniform_ = real
        for h in hooks:
            h.remove()


# ------------------------------------------------------------------------------ layers
def build_layer(bt, rule: str, spec: dict, dtype: str, num_classes: int | None,
                constrain: bool = False):
    """A BioTorch layer of the case's geometry (its own constructor and init), in ``dtype``."""
    config = {"type": rule, "options": {"constrain_weights": constrain,
                                        "gradient_clip": False, "init": "xavier"}}
    mod = bt[rule]
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        if spec["layer"] == "linear":
            args = (spec["in_features"], spec["out_features"])
            layer = (mod.Linear(*args, num_classes, spec["bias"], config) if rule == "dfa"
                     else mod.Linear(*args, spec["bias"], config))
        else:
            args = (spec["in_channels"], spec["out_channels"])
            geo = (tuple(spec["kernel_size"]), tuple(spec["stride"]), tuple(spec["padding"]))
            layer = (mod.Conv2d(*args, num_classes, *geo, bias=spec["bias"],
                                layer_config=config) if rule == "dfa"
                     else mod.Conv2d(*args, *geo, bias=spec["bias"], layer_config=config))
    return layer.to(getattr(torch, dtype))


def load_state(layer, rule: str, weight, bias, feedback: dict) -> None:
    """Set ``W``, ``b`` and the feedback where BioTorch keeps them (module docstring)."""
    with torch.no_grad():
        layer.weight.copy_(T(weight))
        if bias is not None:
            layer.bias.copy_(T(bias))
        if rule == "fa":
            layer.weight_backward.copy_(T(feedback["B"]))
        elif rule == "dfa":
            layer.weight_backward.copy_(T(feedback["D"]))
        elif rule == "frsf":
            layer.weight_backward.copy_(T(np.abs(feedback["M0"])))
        if "constrain_weights" in layer.options and layer.options["constrain_weights"]:
            layer.norm_initial_weights = T(feedback["w0_norm"])


def _feedback(inputs, prefix: str = "") -> dict:
    names = ("B", "D", "M0", "M_t", "w0_norm")
    return {n: inputs[prefix + n] for n in names if prefix + n in inputs}


class BioTorchAdapter:
    """BioTorch 0.0.16 behind the crosscheck protocol (module docstring).

    Parameters
    ----------
    constrain_weights : bool
        Run ``const`` cases through BioTorch's ``constrain_weights`` option instead of
        skipping them (they fail: see docs/crosscheck.md).
    match_dtype : bool
        Run BioTorch with torch's default dtype set to the case's, so that brSF's draw is
        made in the model's precision (False: BioTorch's float32 draw in float64 models).
    """

    name = "biotorch-0.0.16"
    kinds = ("layer", "trajectory", "module", "network")
    rules = RULES

    def __init__(self, constrain_weights: bool = False, match_dtype: bool = True):
        self.constrain_weights = constrain_weights
        self.match_dtype = match_dtype
        self._bt = None

    @property
    def bt(self):
        if self._bt is None:
            self._bt = _biotorch()
        return self._bt

    def supports(self, case):
        o = case.options
        odd = [f"{k}={o[k]!r}" for k, v in _PLAIN.items() if k in o and o[k] != v]
        if odd:
            return f"BioTorch has no {', '.join(odd)}"
        if o.get("const") and not self.constrain_weights:
            return ("const: BioTorch's constrain_weights replaces the weight Parameter in "
                    "forward (run BioTorchAdapter(constrain_weights=True) to measure it)")
        return True

    # layer ---------------------------------------------------------------------------
    def _layer(self, case, per_step: dict):
        a = case.inputs
        k = a["output_error"].shape[-1] if "output_error" in a else None
        layer = build_layer(self.bt, case.rule, case.spec, case.dtype, k,
                            bool(case.options.get("const")))
        load_state(layer, case.rule, a["weight"], a.get("bias"), _feedback(a))
        return layer

    def _step(self, layer, case, x, grad_output, e, M_t):
        """One forward (with brSF's draw injected) and backward; returns (y, x)."""
        if e is not None:
            layer.loss_gradient = T(e)
        x = T(x, requires_grad=True)
        with injected_draws({} if M_t is None else {layer: M_t}), default_dtype(case.dtype if self.match_dtype else None):
            y = layer(x)
        y.backward(T(grad_output))
        return y, x

    def layer(self, case):
        a = case.inputs
        layer = self._layer(case, {})
        y, x = self._step(layer, case, a["x"], a["grad_output"], a.get("output_error"),
                          a.get("M_t"))
        res = {"output": out(y), "grad_input": out(x.grad), "grad_weight": out(layer.weight.grad)}
        if layer.bias is not None:
            res["grad_bias"] = out(layer.bias.grad)
        return res

    # trajectory ----------------------------------------------------------------------
    def trajectory(self, case):
        a, o = case.inputs, case.spec["optimizer"]
        if o["name"] != "sgd":
            raise ValueError(f"biotorch adapter: optimizer {o['name']!r} (BioTorch's rules "
                             "have no learned feedback; only SGD trajectories exist for them)")
        layer = self._layer(case, {})
        params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
        opt = torch.optim.SGD(params, lr=float(a["lr"][0]), momentum=o["momentum"],
                              dampening=o["dampening"], nesterov=o["nesterov"],
                              weight_decay=float(a["weight_decay"][0]))
        hist = OrderedDict(weight=[], bias=[], grad_input=[])
        for t in range(len(a["lr"])):
            for group in opt.param_groups:
                group["lr"], group["weight_decay"] = float(a["lr"][t]), float(a["weight_decay"][t])
            opt.zero_grad(set_to_none=True)
            e = a["output_error"][t] if "output_error" in a else None
            M_t = a["M_t"][t] if "M_t" in a else None
            _, x = self._step(layer, case, a["x"][t], a["grad_output"][t], e, M_t)
            opt.step()
            hist["weight"].append(out(layer.weight))
            if layer.bias is not None:
                hist["bias"].append(out(layer.bias))
            hist["grad_input"].append(out(x.grad))
        return {k: np.stack(v) for k, v in hist.items() if v}

    # module and network ----------------------------------------------------------------
    def _converted(self, case, model):
        """``model`` converted by BioModule to the case's rule, in the case's dtype, with
        every array of the case loaded by its state-dict name; and the brSF draws."""
        mode, a = case.rule, case.inputs
        k = a["output_error"].shape[-1] if "output_error" in a else case.spec.get("num_classes")
        with contextlib.redirect_stdout(io.StringIO()):      # BioModule prints a summary
            net = self.bt["BioModule"](model, mode=mode, output_dim=k if mode == "dfa" else None)
        net = net.to(getattr(torch, case.dtype))
        inner, draws, params = net.module, {}, OrderedDict()
        with torch.no_grad():
            for key, value in a.items():
                owner, _, leaf = key.rpartition(".")
                if not owner:
                    continue
                mod = inner.get_submodule(owner)
                if leaf in ("weight", "bias", "running_mean", "running_var"):
                    getattr(mod, leaf).copy_(T(value))
                    if leaf in ("weight", "bias"):
                        params[key] = getattr(mod, leaf)
                elif leaf == "M_t":
                    draws[mod] = value
        for name, mod in inner.named_modules():
            fb = _feedback(a, name + ".")
            if fb:
                load_state(mod, mode, mod.weight.detach().numpy(), None, fb)
        return net, draws, params

    @staticmethod
    def _results(inner, params, a) -> dict:
        res = {f"grad.{k}": out(p.grad) for k, p in params.items()}
        for key in a:
            owner, _, leaf = key.rpartition(".")
            if leaf in ("running_mean", "running_var"):
                res[key] = out(getattr(inner.get_submodule(owner), leaf))
        return res

    def module(self, case):
        s, a = case.spec, case.inputs
        net, draws, params = self._converted(
            case, _Block(s["in_planes"], s["planes"], s["stride"], s["shortcut"]))
        inner = net.module.train(s["training"])
        if "output_error" in a:      # as BioModule.forward does, for every module
            for m in inner.modules():
                m.loss_gradient = T(a["output_error"])
        x = T(a["x"], requires_grad=True)
        with injected_draws(draws), default_dtype(case.dtype if self.match_dtype else None):
            y = inner(x)
        y.backward(T(a["grad_output"]))
        res = {"output": out(y), "grad_input": out(x.grad)}
        res.update(self._results(inner, params, a))
        return res

    def network(self, case):
        s, a = case.spec, case.inputs
        model = _mlp(s) if s["model"] == "mlp" else _resnet(s)
        net, draws, params = self._converted(case, model)
        x, labels = T(a["x"]), torch.from_numpy(np.array(a["labels"]))
        with injected_draws(draws), default_dtype(case.dtype if self.match_dtype else None):
            logits = (net(x, labels, F.cross_entropy) if case.rule == "dfa" else net(x))
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        res = {"logits": out(logits), "loss": out(loss)}
        res.update(self._results(net.module, params, a))
        return res


# ------------------------------------------------------------------------------ models
def _mlp(s):
    """``flatten, fc1, relu1, ..., fc`` as the engine's MLP (PyTorch modules)."""
    sizes = [s["in_features"]] + list(s["hidden"]) + [s["num_classes"]]
    mods = OrderedDict(flatten=torch.nn.Flatten())
    for i in range(len(sizes) - 1):
        last = i == len(sizes) - 2
        mods["fc" if last else f"fc{i + 1}"] = torch.nn.Linear(sizes[i], sizes[i + 1])
        if not last:
            mods[f"relu{i + 1}"] = torch.nn.ReLU()
    return torch.nn.Sequential(mods)


class _Block(torch.nn.Module if torch is not None else object):
    """CIFAR BasicBlock with the engine's names: conv1-bn1-relu-conv2-bn2, plus the
    shortcut: identity, option A (subsample, zero channels) or B (1x1 conv + BN)."""

    def __init__(self, in_planes, planes, stride, shortcut):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.option_a = (stride != 1 or in_planes != planes) and shortcut == "A"
        self.pad = planes // 4
        if (stride != 1 or in_planes != planes) and shortcut == "B":
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if hasattr(self, "downsample"):
            short = self.downsample(x)
        elif self.option_a:
            short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        else:
            short = x
        return F.relu(y + short)


def _resnet(s):
    """The engine's CIFAR ResNet: conv1-bn1-relu, three stages of BasicBlocks, mean pool, fc."""
    nn = torch.nn

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            w = s["widths"]
            self.conv1 = nn.Conv2d(s["in_channels"], w[0], 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(w[0])
            in_planes = w[0]
            for i, (planes, stride) in enumerate(zip(w, (1, 2, 2)), start=1):
                blocks = []
                for j in range(s["blocks_per_stage"]):
                    blocks.append(_Block(in_planes, planes, stride if j == 0 else 1,
                                         s["shortcut"]))
                    in_planes = planes
                setattr(self, f"layer{i}", nn.Sequential(*blocks))
            self.fc = nn.Linear(in_planes, s["num_classes"])

        def forward(self, x):
            h = F.relu(self.bn1(self.conv1(x)))
            h = self.layer3(self.layer2(self.layer1(h)))
            return self.fc(h.mean(dim=(2, 3)))

    return ResNet()


if torch is not None:
    #: ``--adapter minigrad_pfa.crosscheck.adapters.biotorch:adapter``
    adapter = BioTorchAdapter()


def __getattr__(name):
    if name == "adapter":  # only reached without torch
        _biotorch()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
