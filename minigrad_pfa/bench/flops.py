"""Analytic GEMM FLOP count of one training step, per weight layer and learning rule.

Notation
--------
n batch; P = oh * ow output positions per sample (1 for Linear); N = n * P;
out = W's out features / channels (oc); K = W's fan_in = ic * kh * kw (in for Linear);
k classes; mid = r * out (PFA). A GEMM (p, q) @ (q, s) costs 2 p q s FLOPs (one multiply
and one add per term). Per weight layer and training step::

    forward          y2d = col @ Wmat.T                          2 N out K
    weight gradient  gW  = delta2d.T @ col                       2 N out K
    input error      dx  = col2im(delta2d @ Mmat)                2 N out K   (BP, FA, SF, KP, WM)
                     DFA: e broadcast over the grid, M = D_l     2 N k K
                     none for the first weight layer (its input error is never used)
    PFA, instead of the input error (minigrad_pfa.rules.pfa, I = input error needed):
        literal      2 N mid out (delta @ B) + 2 N mid K (gR) + 2 N mid K I (dx)
        fast         2 out mid K (B.T @ gW) + [2 out mid K (B @ R) + 2 N out K (dx)] I
    WM mirror phase  + 2 N out K (noise forward) + 2 N out K (Hebbian), noise batch = n
    published PyTorch PFA: the literal order + 2 N mid K (a forward conv with R whose
                     result is kept only for its shape)

Only GEMM work is counted (not BN, ReLU, pooling, im2col copies or the optimizer): the
count is a property of the equations, the same for every implementation of them, so
``flops / step time`` compares implementations on equal terms and against a GEMM peak.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..functional.conv import conv_output_size
from ..rules.pfa import pfa_flops
from .suite import pfa_ratio, rule_spec

#: rules whose input error is one transposed GEMM with a kernel of W's shape
_W_SHAPED = ("bp", "fa", "usf", "brsf", "frsf", "kp", "wm")


@dataclass(frozen=True)
class LayerGeometry:
    """What the FLOP count of one weight layer needs (per sample, so batches scale it)."""

    name: str
    out: int
    K: int
    positions: int = 1
    needs_input_error: bool = True

    @classmethod
    def conv(cls, name: str, ic: int, oc: int, kh: int, kw: int, oh: int, ow: int,
             needs_input_error: bool = True) -> "LayerGeometry":
        return cls(name, int(oc), int(ic) * int(kh) * int(kw), int(oh) * int(ow),
                   bool(needs_input_error))

    @classmethod
    def linear(cls, name: str, in_features: int, out_features: int,
               needs_input_error: bool = True) -> "LayerGeometry":
        return cls(name, int(out_features), int(in_features), 1, bool(needs_input_error))

    def as_dict(self) -> dict:
        return asdict(self)


def model_geometry(model, input_shape) -> list[LayerGeometry]:
    """Geometry of every weight layer, from one probe forward of a zero batch of one.

    The probe runs in eval mode (BatchNorm neither updates nor needs batch statistics);
    the modules' train/eval flags are restored and their caches cleared afterwards.

    Parameters
    ----------
    model : engine model (after :func:`minigrad_pfa.nn.models.build_model`)
    input_shape : tuple
        One sample's shape, e.g. (3, 32, 32) or (784,).
    """
    import numpy as np

    from ..backend import get_array_module
    from ..nn.layers import Conv2d
    from ..nn.models import weight_layers

    params = model.parameters()
    xp = get_array_module(params[0].data)
    modes = [(m, m.training) for _, m in model.named_modules()]
    out = []
    try:
        model.eval()
        model.forward(xp.zeros((1,) + tuple(int(s) for s in input_shape),
                               dtype=params[0].data.dtype if params else np.float32))
        for name, layer in weight_layers(model).items():
            if isinstance(layer, Conv2d):
                _, ic, h, w = layer.cache["x_shape"]
                kh, kw = layer.kernel_size
                oh, ow = conv_output_size(h, w, kh, kw, layer.stride, layer.padding)
                out.append(LayerGeometry.conv(name, ic, layer.out_channels, kh, kw, oh, ow,
                                              layer.needs_input_error))
            else:
                out.append(LayerGeometry.linear(name, layer.in_features, layer.out_features,
                                                layer.needs_input_error))
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
        model.clear_cache()
    return out


def layer_flops(g: LayerGeometry, batch: int, rule: str, num_classes: int = 10,
                mid: int | None = None, order: str | None = None,
                published: bool = False) -> dict:
    """GEMM FLOPs of one layer in one training step, split by term.

    Parameters
    ----------
    g : LayerGeometry
    batch : int
    rule : str
        Engine rule name (``bp``, ``fa``, ``usf``, ``brsf``, ``frsf``, ``kp``, ``wm``,
        ``dfa``, ``pfa``).
    num_classes : int
        k, for DFA.
    mid : int
        PFA's intermediate units (``r * out``).
    order : {"fast", "literal"} or None
        PFA's evaluation order; None picks the cheaper one, as ``order="auto"`` does.
    published : bool
        PFA in the published PyTorch formulation (literal order + a forward conv with R).

    Returns
    -------
    dict with int keys ``forward``, ``weight_grad``, ``input_error``, ``feedback``
    (PFA's terms, which include its input error; WM's mirror phase) and ``total``.
    """
    N = int(batch) * g.positions
    base = 2 * N * g.out * g.K
    I = g.needs_input_error
    t = {"forward": base, "weight_grad": base, "input_error": 0, "feedback": 0}
    if rule in _W_SHAPED:
        t["input_error"] = base if I else 0
        if rule == "wm":
            t["feedback"] = 2 * base
    elif rule == "dfa":
        t["input_error"] = 2 * N * int(num_classes) * g.K if I else 0
    elif rule == "pfa":
        if mid is None:
            raise ValueError("layer_flops: PFA needs mid (= r * out)")
        cost = pfa_flops(N, g.out, int(mid), g.K, input_error=I, learn_R=True)
        if published:
            t["feedback"] = cost["literal"] + 2 * N * int(mid) * g.K
        else:
            order = order or min(("fast", "literal"), key=lambda o: cost[o])
            t["feedback"] = cost[order]
    else:
        raise ValueError(f"layer_flops: unknown rule {rule!r}")
    t["total"] = sum(t.values())
    return t


def step_flops(geoms, label: str, batch: int, num_classes: int = 10, orders=None,
               impl: str = "minigrad") -> dict:
    """GEMM FLOPs of one training step of a whole model under a rule label.

    Parameters
    ----------
    geoms : list of LayerGeometry
    label : str
        Rule label (:func:`minigrad_pfa.bench.suite.rule_spec`), e.g. ``pfa-r10``.
    orders : dict name -> "fast" | "literal", optional
        PFA's order per layer as the engine resolved it (else: the label's forced order,
        or the cheaper one).
    impl : {"minigrad", "torch"}
        ``torch`` with a PFA label counts the published formulation.

    Returns
    -------
    dict: the summed terms of :func:`layer_flops` plus ``per_layer`` (name -> total).
    """
    spec = rule_spec(label)
    r = pfa_ratio(label)
    forced = spec.get("order")
    out = {"forward": 0, "weight_grad": 0, "input_error": 0, "feedback": 0, "total": 0,
           "per_layer": {}}
    for g in geoms:
        order = (orders or {}).get(g.name, forced)
        t = layer_flops(g, batch, spec["name"], num_classes,
                        mid=None if r is None else r * g.out, order=order,
                        published=(impl == "torch"))
        for k in ("forward", "weight_grad", "input_error", "feedback", "total"):
            out[k] += t[k]
        out["per_layer"][g.name] = t["total"]
    return out
