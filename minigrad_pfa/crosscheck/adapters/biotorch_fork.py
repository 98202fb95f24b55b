"""Adapter template for the PFA authors' BioTorch fork (``pfa`` layers).

The fork names PFA's feedback as BioTorch names FA's: on each ``Linear`` / ``Conv2d``
layer, besides ``weight`` and ``bias``,

    weight_backward_B   fixed     (out, mid)       Conv2d: (out, mid, 1, 1)
    weight_backward_R   learned   (mid, in)        Conv2d: (mid, ic, kh, kw)

with ``delta_mid = delta @ B`` (conv: the 1x1 channel mix), ``delta_in = delta_mid @ R``
(conv: transposed conv with kernel ``R``) and ``gR = delta_mid.T @ x``, ``mid = r * out``.
The fork is not on PyPI, so this module does not import it: give :class:`ForkAdapter`
your fork's layer constructors (two callables), and it feeds every ``pfa`` case of the
catalogue to them::

    from fork.layers import pfa as fork_pfa      # wherever the fork keeps its PFA layers
    from minigrad_pfa.crosscheck import run
    from minigrad_pfa.crosscheck.adapters.biotorch_fork import ForkAdapter

    adapter = ForkAdapter(
        linear=lambda i, o, mid, bias: fork_pfa.Linear(i, o, bias=bias, expand_ratio=mid // o),
        conv2d=lambda ic, oc, k, s, p, mid, bias: fork_pfa.Conv2d(
            ic, oc, k, stride=s, padding=p, bias=bias, expand_ratio=mid // oc))
    run(adapter, rules=["pfa"])            # or: minigrad-pfa crosscheck run --adapter MOD:adapter

Edit the two lambdas to your fork's constructor signatures; nothing else depends on it.
A constructor must return a ``torch.nn.Module`` whose forward computes the layer and whose
backward implements PFA, with the parameters named as above (``weight_backward_R`` a
Parameter with ``requires_grad=True``). The adapter copies the case's ``W``, ``b``, ``B``
(reshaped to (out, mid, 1, 1) for conv) and ``R`` into them, runs the ``layer`` cases
(one forward and backward: ``grad_R`` from ``weight_backward_R.grad``) and the SGD
``trajectory`` cases (``torch.optim.SGD`` on ``weight``, ``bias`` and
``weight_backward_R`` with the case's momentum, learning rate and weight decay per step).
Cases with sparse feedback (``feedback_density < 1``: the fork's mask names are not
known here) are skipped with a reason. ``tests/test_biotorch_adapter.py`` runs this
template on a small mock module that follows the naming.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

try:
    import torch
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None


def _T(a, requires_grad=False):
    t = torch.from_numpy(np.array(a))
    return t.requires_grad_(True) if requires_grad else t


def _out(t) -> np.ndarray:
    return t.detach().numpy().copy()


class ForkAdapter:
    """The PFA authors' BioTorch fork behind the crosscheck protocol (module docstring).

    Parameters
    ----------
    linear : callable ``(in_features, out_features, mid, bias) -> torch.nn.Module``
    conv2d : callable ``(in_channels, out_channels, kernel_size, stride, padding, mid,
        bias) -> torch.nn.Module`` (kernel_size, stride, padding as (h, w) tuples)
    name : str
        Shown in the report.
    """

    kinds = ("layer", "trajectory")
    rules = ("pfa",)

    def __init__(self, linear, conv2d, name: str = "biotorch-fork"):
        if torch is None:
            raise ImportError("the BioTorch-fork adapter needs torch: pip install torch==2.13.0")
        self.linear, self.conv2d, self.name = linear, conv2d, name

    def supports(self, case):
        if case.options.get("feedback_density", 1.0) < 1.0:
            return "sparse PFA: the fork's mask names are not part of this template"
        if case.kind == "trajectory" and case.spec["optimizer"]["name"] != "sgd":
            return "the template trains with torch.optim.SGD only"
        return True

    def build(self, case):
        """The fork layer of the case's geometry with its ``W``, ``b``, ``B``, ``R``."""
        s, a = case.spec, case.inputs
        mid = a["R"].shape[0]
        if s["layer"] == "linear":
            layer = self.linear(s["in_features"], s["out_features"], mid, s["bias"])
            B = a["B"]
        else:
            layer = self.conv2d(s["in_channels"], s["out_channels"], tuple(s["kernel_size"]),
                                tuple(s["stride"]), tuple(s["padding"]), mid, s["bias"])
            B = a["B"][:, :, None, None]
        layer = layer.to(getattr(torch, case.dtype))
        missing = [n for n in ("weight", "weight_backward_B", "weight_backward_R")
                   if not isinstance(getattr(layer, n, None), torch.Tensor)]
        if missing:
            raise ValueError(f"{self.name}: the layer built for {case.id} has no tensor(s) "
                             f"{missing}; the fork names PFA's feedback weight_backward_B/_R")
        with torch.no_grad():
            for name, value in (("weight", a["weight"]), ("weight_backward_B", B),
                                ("weight_backward_R", a["R"])):
                getattr(layer, name).copy_(_T(value))
            if s["bias"]:
                layer.bias.copy_(_T(a["bias"]))
        return layer

    def layer(self, case):
        a = case.inputs
        layer = self.build(case)
        x = _T(a["x"], requires_grad=True)
        y = layer(x)
        y.backward(_T(a["grad_output"]))
        res = {"output": _out(y), "grad_input": _out(x.grad),
               "grad_weight": _out(layer.weight.grad),
               "grad_R": _out(layer.weight_backward_R.grad)}
        if case.spec["bias"]:
            res["grad_bias"] = _out(layer.bias.grad)
        return res

    def trajectory(self, case):
        a, o = case.inputs, case.spec["optimizer"]
        layer = self.build(case)
        params = [layer.weight, layer.weight_backward_R] + \
            ([layer.bias] if case.spec["bias"] else [])
        opt = torch.optim.SGD(params, lr=float(a["lr"][0]), momentum=o["momentum"],
                              dampening=o["dampening"], nesterov=o["nesterov"])
        hist = OrderedDict(weight=[], bias=[], grad_input=[], R=[])
        for t in range(len(a["lr"])):
            for group in opt.param_groups:
                group["lr"], group["weight_decay"] = float(a["lr"][t]), float(a["weight_decay"][t])
            opt.zero_grad(set_to_none=True)
            x = _T(a["x"][t], requires_grad=True)
            layer(x).backward(_T(a["grad_output"][t]))
            opt.step()
            hist["weight"].append(_out(layer.weight))
            if case.spec["bias"]:
                hist["bias"].append(_out(layer.bias))
            hist["grad_input"].append(_out(x.grad))
            hist["R"].append(_out(layer.weight_backward_R))
        return {k: np.stack(v) for k, v in hist.items() if v}
