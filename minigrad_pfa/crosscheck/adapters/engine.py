"""This engine as a crosscheck adapter: every case's state is loaded from the case's arrays
(nothing is drawn from the engine's streams) into engine objects of the case's dtype, and
the same ``execute_*`` functions that produced the expected outputs (in float64) run them.

Checking it against an export therefore tests the file round trip, the loading of every
named array, and the engine's float32 path against the float64 answers.

    minigrad-pfa crosscheck run --adapter minigrad_pfa.crosscheck.adapters.engine:adapter
"""
from __future__ import annotations

from .. import engine_runs as E
from ..adapter import KINDS


def _num_classes(case) -> int:
    if "output_error" in case.inputs:
        return case.inputs["output_error"].shape[-1]
    return E.NUM_CLASSES


class EngineAdapter:
    """minigrad_pfa itself, fed from a case's arrays (every kind, every rule)."""

    name = "minigrad-pfa"
    kinds = KINDS
    rules = "*"

    def _layer(self, case, x_shape):
        layer = E.make_layer(case.spec, case.dtype)
        E.attach_one(layer, case.rule, case.options, 0, 0, input_shape=tuple(x_shape[1:]),
                     num_classes=_num_classes(case))
        E.load_state(layer, case.inputs)
        return layer

    def layer(self, case):
        return E.execute_layer(self._layer(case, case["x"].shape), case.inputs)

    def mirror(self, case):
        x_shape = case["noise"].shape[1:]
        return E.execute_mirror(self._layer(case, x_shape), case.inputs)

    def trajectory(self, case):
        layer = self._layer(case, case["x"].shape[1:])
        return E.execute_trajectory(layer, case.inputs, case.spec["optimizer"])

    def module(self, case):
        module = E.build_module(case.spec, case.dtype)
        E.attach_module(module, case.rule, case.options, 0, _num_classes(case))
        E.load_state(module, case.inputs)
        return E.execute_module(module, case.inputs)

    def network(self, case):
        from ...rules import attach_rules
        model = E.build_network(case.spec, 0, case.dtype)
        attach_rules(model, dict(case.options, name=case.rule), 0,
                     input_shape=tuple(case["x"].shape[1:]))
        E.load_state(model, case.inputs)
        return E.execute_network(model, case.inputs)


#: ``--adapter minigrad_pfa.crosscheck.adapters.engine:adapter``
adapter = EngineAdapter()
