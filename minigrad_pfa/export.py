"""Export a checkpoint's forward model as a PyTorch state dict (``torch.save``).

So that a result can be confirmed in another framework: the engine names every array as
PyTorch / torchvision do (``fc1.weight``, ``layer1.0.bn1.running_mean``,
``layer1.0.bn1.num_batches_tracked``, ...) with the same shapes (NCHW kernels (oc, ic, kh,
kw), Linear weights (out, in)), so a ``torch.nn`` model of the same architecture loads the
exported file with ``load_state_dict(..., strict=True)`` and, in eval mode, computes the
same logits.

What is exported: the ``model/`` arrays of a checkpoint written by the trainer
(:mod:`minigrad_pfa.checkpoint`), without the learning rules' feedback state (every name
containing ``feedback_``: FA's ``B``, PFA's ``B`` and ``R``, masks, counters), which a
PyTorch model does not have. dtypes are kept (float32 or float64 weights, int64
``num_batches_tracked``). The optimizer state is not exported.

PyTorch is needed only here, imported when an export runs; the engine never depends on it.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict

import numpy as np

from .checkpoint import CheckpointError, load_checkpoint

__all__ = ["ExportError", "resolve_checkpoint", "forward_arrays", "to_torch_state_dict",
           "export_checkpoint"]


class ExportError(ValueError):
    """The checkpoint cannot be exported (no model arrays, PyTorch missing, ...)."""


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file from ``path``: the file itself, or for a run directory the
    checkpoint its results.json was computed on (best.npz when the run selected on
    validation, else latest.npz; latest.npz for an unfinished run)."""
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint {path!r} does not exist")
        return path
    name = "latest.npz"
    results = os.path.join(path, "results.json")
    if os.path.exists(results):
        with open(results) as fh:
            if json.load(fh).get("selected_on") == "val":
                name = "best.npz"
    ckpt = os.path.join(path, name)
    if not os.path.exists(ckpt):
        raise FileNotFoundError(f"run directory {path!r} has no {name} (is it a run "
                                "directory made by 'minigrad-pfa train'?)")
    return ckpt


def forward_arrays(path: str, include_feedback: bool = False
                   ) -> tuple["OrderedDict[str, np.ndarray]", dict]:
    """The model arrays of checkpoint ``path`` (``model/`` prefix removed) and its meta.

    Parameters
    ----------
    path : str
        A ``.npz`` written by the trainer (latest.npz / best.npz) or a run directory
        (:func:`resolve_checkpoint`).
    include_feedback : bool
        Keep the rules' ``feedback_*`` arrays (they have no PyTorch counterpart; for
        inspection only).

    Returns
    -------
    arrays : OrderedDict of str -> numpy.ndarray
        In the model's state-dict order (parameters then buffers of each module).
    meta : dict
        The checkpoint's meta (``config``, ``epoch_done``, ...).
    """
    src = resolve_checkpoint(path)
    try:
        arrays, meta = load_checkpoint(src)
    except CheckpointError as exc:
        raise ExportError(f"{exc}; export a checkpoint written by 'minigrad-pfa train' "
                          "(a run's best.npz or latest.npz, or the run directory)") from None
    out = OrderedDict((k[len("model/"):], v) for k, v in arrays.items()
                      if k.startswith("model/"))
    if not out:
        raise ExportError(f"{path}: the checkpoint holds no 'model/' arrays (not written by "
                          "the trainer)")
    if not include_feedback:
        out = OrderedDict((k, v) for k, v in out.items() if "feedback_" not in k)
    return out, meta


def _torch():
    try:
        import torch
    except ImportError:
        raise ExportError("exporting to PyTorch needs torch: pip install torch "
                          "(CPU wheels suffice)") from None
    return torch


def to_torch_state_dict(arrays) -> "OrderedDict[str, object]":
    """``OrderedDict`` of CPU ``torch.Tensor`` copies of ``arrays`` (names, shapes and
    dtypes unchanged; memory made contiguous in PyTorch's default NCHW order)."""
    torch = _torch()
    return OrderedDict((k, torch.from_numpy(np.array(v, copy=True, order="C")))
                       for k, v in arrays.items())


def export_checkpoint(checkpoint: str, out: str, include_feedback: bool = False) -> dict:
    """Write the forward model of ``checkpoint`` to ``out`` with ``torch.save``.

    The file loads with ``torch.load(out, weights_only=True)`` into an ``OrderedDict`` for
    ``model.load_state_dict(state, strict=True)``.

    Returns
    -------
    dict
        ``checkpoint`` (the file read), ``out``, ``tensors`` (count), ``parameters``
        (number of floating-point values), ``dtypes``, and ``model``/``rule``/``epoch_done``
        from the checkpoint's meta when present.
    """
    src = resolve_checkpoint(checkpoint)
    arrays, meta = forward_arrays(src, include_feedback)
    state = to_torch_state_dict(arrays)
    torch = _torch()
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    tmp = out + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, out)
    cfg = meta.get("config") or {}
    return {"checkpoint": src, "out": out, "tensors": len(state),
            "parameters": int(sum(v.size for v in arrays.values() if v.dtype.kind == "f")),
            "dtypes": sorted({str(v.dtype) for v in arrays.values()}),
            "model": (cfg.get("model") or {}).get("name"), "rule": cfg.get("rule"),
            "epoch_done": meta.get("epoch_done")}
