"""The adapter protocol: what an implementation provides so that a crosscheck case can be
fed to its layer or rule.

An adapter is any object (a module, a class instance) with

=================  ==========================================================================
attribute          meaning
=================  ==========================================================================
``name``           str, shown in the report (e.g. ``"torch-reference"``)
``kinds``          the case kinds it implements, a subset of :data:`KINDS`; one method each,
                   named like the kind: ``layer``, ``mirror``, ``module``, ``network``,
                   ``trajectory``
``rules``          the rule names it implements (``"*"`` for every rule); cases of other
                   rules are skipped (and counted as skipped, never as passed)
``supports``       optional ``supports(case) -> True | str``: a string is the reason to skip
                   a case the adapter cannot express (e.g. an option it does not have)
=================  ==========================================================================

Each kind method receives one :class:`Case` and returns a dict mapping output names to
arrays (NumPy arrays, or anything ``numpy.asarray`` takes; torch tensors are detached).
Every array the case expects must be present with the expected shape; extra names are
ignored. Arrays use PyTorch layouts: activations ``(n, c, h, w)`` (NCHW) or ``(n, f)``,
Linear weights ``(out, in)``, Conv2d kernels ``(oc, ic, kh, kw)``, PFA's ``B`` ``(out, mid)``.

The five kinds (full field lists: ``docs/crosscheck.md``)
---------------------------------------------------------
``layer``       one weight layer under one rule, one forward and one backward pass.
                inputs: ``x``, ``weight``, ``bias`` (if ``spec["bias"]``), ``grad_output``
                (``delta = dL/dy``), ``output_error`` (``e``, DFA only) and the rule's
                feedback arrays (``B``, ``R``, ``D``, ``M0``, ``M_t``, ``mask``, ``mask_B``,
                ``mask_R``, ``w0_norm``, ``w0_sign``). outputs: ``output``, ``grad_input``,
                ``grad_weight``, ``grad_bias`` and the learned-feedback gradients
                (``grad_B`` KP, ``grad_R`` PFA).
``mirror``      WM's mirror phase: inputs ``weight``, ``bias``, ``B``, ``noise`` (one noise
                batch per mirror step, already scaled); output ``B`` after the phase.
``module``      a BatchNorm1d/2d or a BasicBlock, forward + backward for a given
                ``grad_output``; parameters and buffers under PyTorch state-dict names.
``network``     a whole MLP or small CIFAR ResNet: ``x``, ``labels`` -> ``logits``,
                ``loss`` (mean softmax cross-entropy) and every gradient.
``trajectory``  k optimizer steps of one weight layer: per-step inputs stacked on a leading
                axis of length k; outputs the parameters after every step.

``spec`` describes the geometry / architecture / optimizer with JSON values; ``options``
are the rule's options under the engine's names (``minigrad-pfa rules`` lists them).

Minimal example (a NumPy FA adapter for Linear layers)::

    class FALinear:
        name, kinds, rules = "numpy-fa", ("layer",), ("fa",)
        def supports(self, case):
            return True if case.spec["layer"] == "linear" else "Linear only"
        def layer(self, case):
            a = case.inputs
            y = a["x"] @ a["weight"].T + (a["bias"] if "bias" in a else 0)
            B = a["B"] * a["mask"] if "mask" in a else a["B"]
            d = a["grad_output"]
            out = {"output": y, "grad_input": d @ B, "grad_weight": d.T @ a["x"]}
            if "bias" in a:
                out["grad_bias"] = d.sum(0)
            return out

:func:`validate_adapter` checks an adapter before anything runs and raises
:class:`AdapterError` with a one-line message naming what is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: case kinds, in the order the checker runs them; each is also the adapter's method name
KINDS = ("layer", "mirror", "module", "network", "trajectory")

#: output names -> words used in the report ("forward ok, input error ok, R gradient differs")
QUANTITY_WORDS = {
    "output": "forward", "logits": "forward", "loss": "loss",
    "grad_input": "input error", "grad_weight": "W gradient", "grad_bias": "b gradient",
    "grad_B": "B gradient", "grad_R": "R gradient",
    "B": "B", "R": "R", "weight": "W", "bias": "b",
}


class AdapterError(ValueError):
    """A malformed or incomplete adapter (one-line message)."""


@dataclass(frozen=True)
class Case:
    """One crosscheck case as an adapter sees it (expected outputs are withheld).

    Attributes
    ----------
    id : str
        Unique, stable name, e.g. ``"layer/pfa-r3/conv-k3-s2-p1/float32"``.
    kind : str
        One of :data:`KINDS`.
    rule : str
        The rule name (``"bp"`` for modules without a rule, e.g. BatchNorm).
    options : dict
        Every option of the rule (engine names), defaults resolved
        (:func:`minigrad_pfa.rules.registry.effective_options`).
    spec : dict
        Geometry, architecture or optimizer (JSON values; see ``docs/crosscheck.md``).
    dtype : str
        ``"float32"`` or ``"float64"``: compute in this precision.
    inputs : dict of str -> numpy.ndarray
        Every input and state array (read-only).
    """

    id: str
    kind: str
    rule: str
    options: dict
    spec: dict
    dtype: str
    inputs: dict = field(repr=False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.inputs[name]


def adapter_rules(adapter) -> tuple | str:
    """The adapter's ``rules`` as a tuple, or ``"*"``."""
    rules = getattr(adapter, "rules")
    return "*" if rules == "*" else tuple(rules)


def validate_adapter(adapter) -> None:
    """Check that ``adapter`` follows the protocol; raise :class:`AdapterError` otherwise.

    Checked: ``name`` is a non-empty string; ``kinds`` is a non-empty collection of known
    kinds, each with a callable method of that name; ``rules`` is ``"*"`` or a non-empty
    collection of strings; ``supports``, when present, is callable.
    """
    label = getattr(adapter, "name", None)
    where = f"adapter {label!r}" if isinstance(label, str) and label else \
        f"adapter {type(adapter).__name__}"
    if not isinstance(label, str) or not label:
        raise AdapterError(f"{where}: needs a non-empty string attribute 'name'")
    kinds = getattr(adapter, "kinds", None)
    if isinstance(kinds, str) or not _is_collection(kinds) or not kinds:
        raise AdapterError(f"{where}: needs 'kinds', a non-empty tuple of case kinds from "
                           f"{list(KINDS)}, got {kinds!r}")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise AdapterError(f"{where}: unknown case kind(s) {unknown} in 'kinds'; known: "
                           f"{list(KINDS)}")
    missing = [k for k in kinds if not callable(getattr(adapter, k, None))]
    if missing:
        raise AdapterError(f"{where}: declares kind(s) {missing} but has no callable "
                           f"method(s) {missing} (one method per declared kind, taking a "
                           "Case and returning a dict of arrays)")
    rules = getattr(adapter, "rules", None)
    if rules != "*" and (isinstance(rules, str) or not _is_collection(rules) or not rules
                         or not all(isinstance(r, str) for r in rules)):
        raise AdapterError(f"{where}: needs 'rules', '*' or a non-empty tuple of rule "
                           f"names, got {rules!r}")
    supports = getattr(adapter, "supports", None)
    if supports is not None and not callable(supports):
        raise AdapterError(f"{where}: 'supports' must be a method supports(case) -> "
                           "True or a reason string")


def _is_collection(value: Any) -> bool:
    return isinstance(value, (tuple, list, set, frozenset))


def skip_reason(adapter, case: Case) -> str | None:
    """Why ``adapter`` does not run ``case`` (None when it runs it)."""
    if case.kind not in adapter.kinds:
        return f"kind {case.kind!r} not implemented"
    rules = adapter_rules(adapter)
    if rules != "*" and case.rule not in rules:
        return f"rule {case.rule!r} not implemented"
    supports = getattr(adapter, "supports", None)
    if supports is not None:
        verdict = supports(case)
        if verdict is not True:
            return str(verdict) if verdict else "not supported"
    return None


def to_numpy_output(value) -> np.ndarray:
    """An adapter's output value as a NumPy array (torch tensors are detached first)."""
    if hasattr(value, "detach") and callable(value.detach):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
