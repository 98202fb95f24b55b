"""Group a cProfile of a training step by phase: where the step's time goes.

A function's *own* time (cProfile's tottime) includes the NumPy operators it applies with
operator syntax or through ufuncs (``a @ b``, ``xp.matmul``, ``+=``): those are not
profiled calls. So each phase is a set of functions whose own time is dominated by it:

* **GEMM**: the conv chunk loops that call ``matmul`` (``rows`` of ``_conv_gemm``, the
  weight gradient's per-block products (the ``<listcomp>`` of its ``partials``), the
  row-tap GEMMs and their sums ``gemm_into``; its copy is ``copyto``'s own),
  ``_conv_gemm``, ``conv2d_weight_grad``, the fold's per-offset GEMMs, ``channel_matmul``,
  linear layers, PFA's ``contract_first``; under ``--cpu-kernels numba`` the compiled
  convolutions (every function of ``jit/conv.py``: one call builds a sample's row taps and
  runs its GEMMs, so the taps copy is counted here too, as is the compiled fold's col2im);
* **im2col / col2im**: the chunk windows' copy (``_ChunkWindows.__call__``, ``copyto``),
  the padded chunk buffers (``_fill_padded``), ``fold_windows`` (the ``+=`` of col2im),
  padding, ``as_strided``, ``ascontiguousarray``, ``concatenate``;
* **BatchNorm**: ``functional/batchnorm.py``, ``cpu/batchnorm.py``, ``jit/batchnorm.py``,
  ``einsum`` and the ufunc ``reduce`` (column sums; also the bias gradients' and the
  loss's sums);
* **elementwise**: ReLU, the residual additions (``functional/elementwise.py``, the
  shortcuts of ``nn/resnet.py``), pooling, the loss;
* **optimizer**: ``optim/``;
* **threads**: the pool's dispatch and waits (``minigrad_pfa/cpu/threads.py``, locks);
* **Python overhead**: everything else (module dispatch, rules' bookkeeping, caches).
"""
from __future__ import annotations

PHASES = ("GEMM", "im2col / col2im", "BatchNorm", "elementwise", "optimizer", "threads",
          "Python overhead")

_GEMM_CONV = {"rows", "partial", "<listcomp>", "gemm_into", "_conv_gemm", "conv2d_weight_grad",
              "<lambda>",
              "channel_matmul", "_input_error_col2im", "_input_error_fold",
              "_input_error_fold_compiled"}
_COPY_CONV = {"__call__", "_fill_padded", "fold_windows", "_im2col_cl", "col2im",
              "pad_channels_last", "kernel_windows", "__init__", "channels_last", "_delta2d"}
_COPY_BUILTIN = ("copyto", "ascontiguousarray", "as_strided", "concatenate", "zeros",
                 "empty")


def phase_of(function: str, where: str) -> str:
    """The phase of one profiled function (name and ``path:line``)."""
    path = where.rsplit(":", 1)[0]
    if path.endswith("functional/conv.py"):
        if function in _GEMM_CONV:
            return "GEMM"
        if function in _COPY_CONV:
            return "im2col / col2im"
    if path.endswith("jit/conv.py"):  # compiled taps + GEMM calls, inseparable in a profile
        return "GEMM"
    if path.endswith(("functional/linear.py", "cpu/elementwise.py")) and "matmul" in \
            function or path.endswith("functional/linear.py") or function == "contract_first":
        return "GEMM"
    if any(b in function for b in _COPY_BUILTIN) or path.endswith("_stride_tricks_impl.py"):
        return "im2col / col2im"
    if path.endswith("batchnorm.py") or "einsum" in function or "'reduce'" in function:
        return "BatchNorm"
    if path.endswith(("activation.py", "elementwise.py", "nn/resnet.py", "pooling.py",
                      "loss.py")):
        return "elementwise"
    if "/optim/" in path or path.startswith("minigrad_pfa/optim"):
        return "optimizer"
    if path.endswith("cpu/threads.py") or "acquire" in function or "threading.py" in path \
            or "concurrent/futures" in path:
        return "threads"
    return "Python overhead"


def phase_totals(rows) -> dict:
    """Seconds per step of each phase, from cProfile rows (``function``, ``where``,
    ``tottime_s``) covering the whole profile (not only the top functions)."""
    out = {p: 0.0 for p in PHASES}
    for r in rows:
        out[phase_of(r["function"], r["where"])] += r["tottime_s"]
    return out
