"""Import and export of peer checkpoints: BioTorch and the PFA authors' BioTorch fork.

A model trained elsewhere can be loaded into an engine model, feedback included, so that
its alignment can be measured here or its training continued; an engine model can be
written back under the peer's names. ``peer state -> engine -> peer state`` is bit-exact.

Names (per weight layer ``L`` of the engine model; ``P`` the prefix, ``"module."`` for a
``biotorch.module.biomodule.BioModule``, detected when not given)::

    engine                         peer ("biotorch": BioTorch 0.0.16)       shape
    L.weight, L.bias               P L.weight, P L.bias                     W, b
    fa    feedback_B               P L.weight_backward                      W's
    dfa   feedback_D               P L.weight_backward                      (k, in) / (k, ic, kh, kw)
    frsf  feedback_M0              P L.weight_backward  (= abs(M0))         W's
    usf, brsf  (no state)          P L.weight_backward  (a cache)           W's
    every rule but bp              P L.bias_backward    (never read)        b's; dfa (k, in) / (k, ic)
    peer "biotorch-fork" adds (the PFA authors' fork):
    pfa   feedback_B               P L.weight_backward_B  fixed             (out, mid) / (out, mid, 1, 1)
    pfa   feedback_R               P L.weight_backward_R  learned           (mid, in) / (mid, ic, kh, kw)
                                   P L.bias_backward      optional          b's

Every other array (BatchNorm, ...) has its PyTorch name in both (``P`` + the engine name).

Conventions (BioTorch's, see docs/crosscheck.md "Measured against BioTorch 0.0.16"):

* frSF: BioTorch stores ``abs(M0)``; the engine stores a signed ``M0`` and uses
  ``abs(M0)``, so the feedback is the same. Import keeps the values (a negative entry is
  an error: BioTorch never writes one, and its Conv2d would use it signed); export writes
  ``abs(M0)``.
* uSF / brSF: BioTorch overwrites ``weight_backward`` with the matrix of the last forward
  pass (a cache, stale after an optimizer step); the engine rebuilds the matrix from the
  current ``W`` and has nothing to import. ``bias_backward`` is never read by BioTorch.
  These arrays are kept beside the model after an import and written back verbatim while
  the layer's ``W`` is unchanged (so the round trip is bit-exact); otherwise export writes
  the engine's current matrix (uSF ``s * sign(W)``, brSF this step's draw) and zeros for
  ``bias_backward`` (BioTorch's Xavier initialisation).
* uSF's scale: the engine uses ``s = sqrt(2 / (fan_in + fan_out))``, BioTorch's Xavier
  mode too; a cache with another magnitude (BioTorch ``init="kaiming"``) is an error.

Not representable in BioTorch (an error naming the layer): KP, WM, sparse feedback
(masks), ``dfa`` with ``conv="dense"``; PFA only in the fork format.

Errors: every missing, unexpected, misshaped or mistyped key, and every layer whose rule
cannot be expressed, is listed in one :class:`PeerCheckpointError`.
"""
from __future__ import annotations

import math
import os
import weakref
from collections import OrderedDict

import numpy as np

from .backend import to_numpy
from .nn.models import weight_layers

FORMATS = ("biotorch", "biotorch-fork")
#: rules whose feedback each format names
_RULES = {"biotorch": ("bp", "fa", "dfa", "usf", "brsf", "frsf"),
          "biotorch-fork": ("bp", "fa", "dfa", "usf", "brsf", "frsf", "pfa")}
#: peer arrays BioTorch keeps but the engine does not use, remembered per layer after an
#: import: layer -> (W at import, {suffix: array})
_KEPT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
TORCH_HINT = "pip install torch==2.13.0"


class PeerCheckpointError(ValueError):
    """A peer state dict does not fit the engine model (every problem listed)."""


# ------------------------------------------------------------------------------ files
def _torch():
    try:
        import torch
    except ImportError:
        raise PeerCheckpointError(f"reading or writing a .pt checkpoint needs PyTorch: "
                                  f"{TORCH_HINT}") from None
    return torch


def load_peer_file(path: str) -> "OrderedDict[str, np.ndarray]":
    """A peer ``.pt`` state dict as NumPy arrays, read with ``torch.load(weights_only=True)``."""
    if not os.path.exists(path):
        raise PeerCheckpointError(f"peer checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise PeerCheckpointError(f"peer checkpoint {path!r} is a directory, not a .pt file")
    torch = _torch()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not its own
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise PeerCheckpointError(f"peer checkpoint {path!r} is not a PyTorch state dict "
                                  f"file ({type(exc).__name__}: {first})") from None
    if hasattr(state, "state_dict") and not isinstance(state, dict):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise PeerCheckpointError(f"{path}: expected a state dict (name -> tensor), got "
                                  f"{type(state).__name__}")
    return OrderedDict((k, _as_numpy(v)) for k, v in state.items())


def save_peer_file(state, path: str) -> None:
    """Write ``state`` (name -> array) with ``torch.save`` as CPU tensors, atomically."""
    torch = _torch()
    tensors = OrderedDict((k, torch.from_numpy(np.array(v, copy=True, order="C")))
                          for k, v in state.items())
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    torch.save(tensors, tmp)
    os.replace(tmp, path)


def _as_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):
        return v.detach().cpu().numpy()
    return np.asarray(v)


# ------------------------------------------------------------------------------ names
def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise PeerCheckpointError(f"unknown peer format {fmt!r}; choose one of {list(FORMATS)}")


def _layer_problem(layer, rule: str, fmt: str) -> str | None:
    """Why ``layer``'s rule has no name in ``fmt`` (None when it has)."""
    if rule not in _RULES[fmt]:
        hint = " (use format 'biotorch-fork')" if rule == "pfa" else ""
        return f"{layer.qualname}: rule {rule!r} has no {fmt} counterpart{hint}"
    masks = [k for k in layer._buffers if k.startswith("feedback_mask")]
    if masks:
        return f"{layer.qualname}: sparse feedback ({masks[0]}) has no {fmt} counterpart"
    if rule == "dfa" and layer.rule.options["conv"] == "dense" and len(layer.weight_shape) == 4:
        return (f"{layer.qualname}: dfa conv='dense' has no {fmt} counterpart (BioTorch "
                "uses the conv convention)")
    return None


def _feedback_shapes(layer, rule: str) -> "OrderedDict[str, tuple]":
    """Peer suffix -> expected shape of the feedback arrays of one layer."""
    W = layer.weight_shape
    b = None if layer.bias is None else tuple(layer.bias.data.shape)
    out: "OrderedDict[str, tuple]" = OrderedDict()
    if rule == "bp":
        return out
    if rule == "pfa":
        B = tuple(layer.feedback_B.shape)
        out["weight_backward_B"] = B + (1, 1) if len(W) == 4 else B
        out["weight_backward_R"] = tuple(layer.feedback_R.data.shape)
        return out          # bias_backward: optional in the fork
    if rule == "dfa":
        D = tuple(layer.feedback_D.shape)
        out["weight_backward"] = D
        if b is not None:
            out["bias_backward"] = D[:2]
        return out
    out["weight_backward"] = W
    if b is not None:
        out["bias_backward"] = b
    return out


def _detect_prefix(names, own) -> str:
    if any(n in names for n in own):
        return ""
    return "module." if any(n.startswith("module.") for n in names) else ""


# ------------------------------------------------------------------------------ import
def import_peer_state(model, state, fmt: str = "biotorch", prefix: str | None = None) -> dict:
    """Load a peer state dict into ``model`` (rules attached), feedback included.

    Parameters
    ----------
    model : Module
        An engine model of the same architecture, names as PyTorch's, with the peer's
        rules attached (:func:`~minigrad_pfa.rules.attach_rules`).
    state : mapping of str -> array or torch.Tensor
        The peer's ``state_dict()`` (or :func:`load_peer_file`'s result).
    fmt : {"biotorch", "biotorch-fork"}
    prefix : str, optional
        Prepended to every engine name; None detects ``"module."`` (BioModule) or ``""``.

    Returns
    -------
    dict
        ``prefix``, ``layers`` ({qualname: rule}), ``arrays`` (count read).

    Raises
    ------
    PeerCheckpointError
        Listing every missing / unexpected / misshaped / mistyped key and every layer
        whose rule the format cannot express; the model is unchanged then.
    """
    _check_format(fmt)
    state = OrderedDict((k, _as_numpy(v)) for k, v in state.items())
    forward = model.state_dict(include_feedback=False)
    prefix = _detect_prefix(state, forward) if prefix is None else prefix
    expected, problems = _expected(model, fmt, prefix)
    optional = _optional(model, fmt, prefix)
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected and k not in optional]
    shapes = dict(expected, **optional)
    for k, v in state.items():
        if k not in shapes:
            continue
        want_shape, want_dtype = shapes[k]
        if tuple(v.shape) != want_shape:
            problems.append(f"{k}: shape {tuple(v.shape)}, the model needs {want_shape}")
        elif v.dtype != want_dtype:
            problems.append(f"{k}: dtype {v.dtype}, the model has {want_dtype}")
    problems += _value_problems(model, state, prefix)
    if missing or extra or problems:
        parts = ([f"missing {missing}"] if missing else []) + \
                ([f"unexpected {extra}"] if extra else []) + problems
        raise PeerCheckpointError(f"{fmt} state dict does not fit the model (prefix "
                                  f"{prefix!r}): " + "; ".join(parts))
    new = model.state_dict()          # a new dict: assigning to it changes nothing yet
    for k in forward:
        new[k] = state[prefix + k]
    layers = OrderedDict()
    for name, layer in weight_layers(model).items():
        rule = layer.rule.name
        layers[name] = rule
        p = prefix + name + "."
        for key, value in _to_engine(layer, rule, state, p).items():
            new[f"{name}.{key}"] = value
    model.load_state_dict(new, strict=True)
    for name, layer in weight_layers(model).items():
        p = prefix + name + "."
        # arrays the engine does not hold: BioTorch's unused bias_backward, and the
        # matrix uSF/brSF cached at the peer's last forward pass
        suffixes = ("bias_backward",) + (("weight_backward",) if layer.rule.name in
                                         ("usf", "brsf") else ())
        kept = {s: state[p + s].copy() for s in suffixes if p + s in state}
        _KEPT[layer] = (to_numpy(layer.weight.data).copy(), kept)
    return {"prefix": prefix, "layers": dict(layers), "arrays": len(state)}


def _expected(model, fmt: str, prefix: str):
    """Required peer names -> (shape, dtype), and the layers the format cannot express."""
    out, problems = OrderedDict(), []
    for k, v in model.state_dict(include_feedback=False).items():
        out[prefix + k] = (tuple(v.shape), np.dtype(v.dtype))
    for name, layer in weight_layers(model).items():
        rule = layer.rule.name
        why = _layer_problem(layer, rule, fmt)
        if why:
            problems.append(why)
            continue
        for suffix, shape in _feedback_shapes(layer, rule).items():
            out[f"{prefix}{name}.{suffix}"] = (shape, np.dtype(layer.dtype))
    return out, problems


def _optional(model, fmt: str, prefix: str) -> dict:
    """Names a peer may carry or not: the fork's ``bias_backward`` of PFA layers."""
    out = {}
    for name, layer in weight_layers(model).items():
        if layer.rule.name == "pfa" and layer.bias is not None and fmt == "biotorch-fork":
            out[f"{prefix}{name}.bias_backward"] = (tuple(layer.bias.data.shape),
                                                    np.dtype(layer.dtype))
    return out


def _value_problems(model, state, prefix: str) -> list:
    """Values BioTorch never writes, or that would make the engine compute differently."""
    problems = []
    for name, layer in weight_layers(model).items():
        wb = state.get(f"{prefix}{name}.weight_backward")
        if wb is None or tuple(wb.shape) != layer.weight_shape:
            continue
        rule = layer.rule.name
        if rule == "frsf" and (wb < 0).any():
            problems.append(f"{prefix}{name}.weight_backward: frsf feedback with negative "
                            "entries (BioTorch stores abs(M0); its Conv2d uses it unsigned)")
        if rule == "usf":
            s = usf_scale(layer)
            mags = np.abs(wb[wb != 0]).astype(np.float64)
            if mags.size and not np.allclose(mags, s, rtol=1e-6, atol=0.0):
                problems.append(
                    f"{prefix}{name}.weight_backward: usf magnitude {float(mags.max()):.6g}, "
                    f"the engine's is sqrt(2/(fan_in+fan_out)) = {s:.6g} (a BioTorch "
                    "model built with init='kaiming'?)")
    return problems


def usf_scale(layer) -> float:
    """uSF's ``s = sqrt(2 / (fan_in + fan_out))`` (BioTorch's Xavier ``scaling_factor``)."""
    return math.sqrt(2.0 / (layer.fan_in + layer.fan_out))


def _to_engine(layer, rule: str, state, p: str) -> dict:
    """Engine feedback key -> value for one layer (names without the layer prefix)."""
    if rule == "fa":
        return {"feedback_B": state[p + "weight_backward"]}
    if rule == "dfa":
        return {"feedback_D": state[p + "weight_backward"]}
    if rule == "frsf":
        return {"feedback_M0": state[p + "weight_backward"]}
    if rule == "pfa":
        B = state[p + "weight_backward_B"]
        return {"feedback_B": B.reshape(B.shape[:2]),
                "feedback_R": state[p + "weight_backward_R"]}
    return {}   # bp, usf, brsf: nothing to import (usf/brsf caches are kept, see _KEPT)


# ------------------------------------------------------------------------------ export
def export_peer_state(model, fmt: str = "biotorch", prefix: str = ""
                      ) -> "OrderedDict[str, np.ndarray]":
    """``model``'s arrays under the peer's names (host NumPy arrays, the model's dtypes).

    Order: per module, as the peer's ``state_dict()`` lists them (``weight``, ``bias``,
    then the feedback arrays). Raises :class:`PeerCheckpointError` listing every layer
    whose rule ``fmt`` cannot express.
    """
    _check_format(fmt)
    _, problems = _expected(model, fmt, prefix)
    if problems:
        raise PeerCheckpointError(f"cannot export to {fmt}: " + "; ".join(problems))
    layers = weight_layers(model)
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    forward = model.state_dict(include_feedback=False)
    done = set()
    for k, v in forward.items():
        out[prefix + k] = to_numpy(v).copy()
        owner = k.rpartition(".")[0]
        if owner in layers and owner not in done and _last_forward_key(forward, owner) == k:
            done.add(owner)
            for suffix, value in _from_engine(layers[owner]).items():
                out[f"{prefix}{owner}.{suffix}"] = value
    return out


def _last_forward_key(forward, owner: str) -> str:
    return [k for k in forward if k.rpartition(".")[0] == owner][-1]


def _from_engine(layer) -> "OrderedDict[str, np.ndarray]":
    """Peer suffix -> array of one layer's feedback."""
    rule = layer.rule.name
    W = to_numpy(layer.weight.data)
    W_at_import, kept = _KEPT.get(layer, (None, {}))
    unchanged = W_at_import is not None and np.array_equal(W_at_import, W)
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    if rule == "bp":
        return out
    if rule == "pfa":
        B = to_numpy(layer.feedback_B).copy()
        out["weight_backward_B"] = B.reshape(B.shape + (1, 1)) if W.ndim == 4 else B
        out["weight_backward_R"] = to_numpy(layer.feedback_R.data).copy()
        if "bias_backward" in kept:
            out["bias_backward"] = kept["bias_backward"].copy()
        return out
    if rule == "fa":
        wb = to_numpy(layer.feedback_B).copy()
    elif rule == "dfa":
        wb = to_numpy(layer.feedback_D).copy()
    elif rule == "frsf":
        wb = np.abs(to_numpy(layer.feedback_M0))
    elif unchanged and "weight_backward" in kept:      # usf / brsf cache, W unchanged
        wb = kept["weight_backward"].copy()
    else:
        wb = to_numpy(layer.rule.path_matrix(layer)).copy()
    out["weight_backward"] = wb
    if layer.bias is not None:
        if "bias_backward" in kept:
            out["bias_backward"] = kept["bias_backward"].copy()
        else:
            shape = wb.shape[:2] if rule == "dfa" else tuple(layer.bias.data.shape)
            out["bias_backward"] = np.zeros(shape, dtype=wb.dtype)
    return out


# ------------------------------------------------------------------------------ checkpoints
def model_of_checkpoint(checkpoint: str):
    """(model with its rules, meta) rebuilt from an engine checkpoint or run directory:
    the model and rules of its config, then its ``model/`` arrays."""
    from .checkpoint import load_checkpoint, unpack_state
    from .export import resolve_checkpoint
    from .train import model_from_config
    src = resolve_checkpoint(checkpoint)
    arrays, meta = load_checkpoint(src)
    cfg = meta.get("config")
    if not cfg:
        raise PeerCheckpointError(f"{src}: the checkpoint has no config (not written by "
                                  "'minigrad-pfa train' or 'minigrad-pfa import')")
    model, _ = model_from_config(cfg)
    unpack_state({k: v for k, v in arrays.items() if k.startswith("model/")}, model)
    return model, dict(meta, checkpoint=src)


def export_checkpoint_to_peer(checkpoint: str, out: str, fmt: str = "biotorch",
                              prefix: str = "") -> dict:
    """Write an engine checkpoint's model, feedback included, as a peer ``.pt`` state dict."""
    _check_format(fmt)
    model, meta = model_of_checkpoint(checkpoint)
    state = export_peer_state(model, fmt, prefix)
    save_peer_file(state, out)
    return {"checkpoint": meta["checkpoint"], "out": out, "tensors": len(state),
            "format": fmt, "prefix": prefix}


def import_peer_checkpoint(peer: str, like: str, out: str, fmt: str = "biotorch",
                           prefix: str | None = None) -> dict:
    """Load peer state dict ``peer`` into the model (and rules) of engine checkpoint
    ``like`` and write the result as an engine checkpoint ``out`` (model arrays and
    config; no optimizer state). Returns the import report plus the weight alignment of
    every layer (:func:`~minigrad_pfa.metrics.alignment.weight_alignment`)."""

    from .checkpoint import pack_state, save_checkpoint
    from .metrics.alignment import weight_alignment
    state = load_peer_file(peer)             # first: a bad peer file is named as such
    model, meta = model_of_checkpoint(like)
    report = import_peer_state(model, state, fmt, prefix)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_checkpoint(out, pack_state(model), {"config": meta["config"],
                                             "imported_from": os.path.abspath(peer),
                                             "peer_format": fmt})
    report.update(out=out, alignment=weight_alignment(model))
    return report
