"""Crosscheck cases for WM's ``akrout`` variant (Akrout et al.'s mirror, docs/rules.md
"WM: the engine's variant and Akrout et al.'s"), added to the catalogue as the source
``"wm-akrout"``.

Kind ``mirror``, Linear only (the variant rejects conv layers). Each case stores ``W``,
``b`` (when the layer has one: the mirror's ``sigmoid(xi @ W.T + b)`` reads it), ``B`` and
the noise *as used*, ``xi = a (U[0, 1) - 1/2)`` per mirror step, so an adapter computes,
for each step,

    y = sigmoid(xi @ W.T + b);   B <- (1 - eta*lam) B + eta * (y.T @ xi)     (a batch sum)

with ``eta = mirror_lr``, ``lam = mirror_decay`` from the case's options (their code:
``lam = 0``). Variants: their defaults (one step), three steps, a decay, and a large
amplitude and rate (a wrong sigmoid or a batch mean instead of a sum is far outside
the tolerance).
"""
from __future__ import annotations

import numpy as np

from . import catalogue as C
from . import engine_runs as E

VARIANTS = ({"variant": "akrout"},
            {"variant": "akrout", "mirror_steps": 3},
            {"variant": "akrout", "mirror_decay": 0.5},
            {"variant": "akrout", "noise_amplitude": 1.0, "mirror_lr": 0.2})
GEOMETRIES = ((C.linear(7, 5), (6, 7)), (C.linear(9, 4, bias=False), (5, 9)))


def run_akrout_mirror(options, spec, dtype, seed, x_shape):
    """Draw ``W``, ``b``, ``B`` and the uniform noise, then the engine's mirror phase."""
    rng = np.random.default_rng(seed)
    layer, inputs = E._drawn_layer("wm", options, spec, dtype, rng, seed, x_shape)
    o = layer.rule.options
    shape = (o["mirror_steps"], o["mirror_batch"] or x_shape[0]) + tuple(x_shape[1:])
    inputs["noise"] = E.quantise(o["noise_amplitude"] * (rng.random(shape) - 0.5), dtype)
    return inputs, E.execute_mirror(layer, inputs)


def akrout_cases():
    for options in VARIANTS:
        for spec, x_shape in GEOMETRIES:
            for dtype in C.DTYPES:
                cid = f"mirror/{C.variant_name('wm', options)}/{C.geometry_name(spec)}/{dtype}"
                yield C.pending(cid, "mirror", "wm", options, spec, dtype,
                                lambda s, o=options, sp=spec, d=dtype, xs=x_shape:
                                run_akrout_mirror(o, sp, d, s, xs))


C.register_source("wm-akrout", akrout_cases)
