"""The CPU part of ``doctor``: facts about this machine, never a failure for what is optional.

Each ``*_facts`` function returns a JSON-able dict; :func:`machine_report` collects them
and :func:`format_machine` turns them into one line per subject.
"""
from __future__ import annotations

import contextlib
import io
import os
import platform


def numpy_facts() -> dict:
    """NumPy version, its BLAS and thread pools (threadpoolctl when installed)."""
    import numpy as np
    out = {"numpy": np.__version__, "cpus": os.cpu_count(),
           "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS",
                                                     "OPENBLAS_NUM_THREADS",
                                                     "MKL_NUM_THREADS") if k in os.environ}}
    try:
        from threadpoolctl import threadpool_info
        out["blas"] = [{"api": p.get("internal_api"), "version": p.get("version"),
                        "threads": p.get("num_threads")} for p in threadpool_info()]
    except ImportError:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                cfg = np.show_config(mode="dicts")
            except TypeError:  # older NumPy prints only
                cfg = None
        if isinstance(cfg, dict):
            blas = cfg.get("Build Dependencies", {}).get("blas", {})
            out["blas"] = [{"api": blas.get("name"), "version": blas.get("version"),
                            "threads": None}]
        else:
            out["blas"] = [{"api": buf.getvalue().strip()[:200], "version": None,
                            "threads": None}]
        out["blas_note"] = "threadpoolctl not installed: thread counts unknown"
    return out


def cuda_facts() -> dict:
    """CuPy, CUDA driver / runtime versions, GPU name and memory (or why there is none)."""
    from ..backend import DeviceError, cupy_module, standin_active
    out = {"standin": standin_active()}
    try:
        cp = cupy_module()
    except DeviceError as exc:
        return dict(out, cupy=None, gpu=None, reason=str(exc))
    out["cupy"] = cp.__version__
    try:
        out["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
        out["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver / no device: a fact, not a failure
        return dict(out, gpu=None, reason=f"CUDA is not usable: {exc}")
    gpus = []
    for i in range(n):
        p = cp.cuda.runtime.getDeviceProperties(i)
        name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
        gpus.append({"name": name, "memory_gb": p["totalGlobalMem"] / 2 ** 30,
                     "compute_capability": f"{p['major']}.{p['minor']}"})
    out["gpu"] = gpus or None
    if not gpus:
        out["reason"] = "CUDA reports 0 devices"
    out["tf32"] = os.environ.get("CUPY_TF32", "0") == "1"
    return out


def torch_facts() -> dict:
    try:
        import torch
    except ImportError:
        return {"torch": None}
    return {"torch": torch.__version__, "torch_cuda": bool(torch.cuda.is_available())}


def kernel_facts() -> dict:
    """The CPU kernels in use (``--cpu-kernels``), whether Numba imports, and its thread-safe
    threading layer (:func:`minigrad_pfa.jit.parallel.layer`; None without one)."""
    from ..jit import get_cpu_kernels
    try:
        import numba
        version = numba.__version__
    except ImportError:
        version = None
    layer = None
    if version is not None:
        import warnings

        from ..jit.parallel import layer as _layer
        with warnings.catch_warnings():  # the report says it instead
            warnings.simplefilter("ignore", RuntimeWarning)
            layer = _layer()
    return {"cpu_kernels": get_cpu_kernels(), "numba": version, "numba_layer": layer}


def dataset_facts() -> dict:
    from ..data.registry import DATASETS, dataset_status
    return {name: dataset_status(name) for name in DATASETS}


def machine_report() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "numpy": numpy_facts(), "cuda": cuda_facts(), "torch": torch_facts(),
            "kernels": kernel_facts(), "datasets": dataset_facts()}


def format_machine(r: dict) -> list[str]:
    n, c, t = r["numpy"], r["cuda"], r["torch"]
    blas = "; ".join(f"{b['api']} {b['version'] or ''} ({b['threads']} threads)".strip()
                     for b in n["blas"])
    lines = [f"python {r['python']} on {r['platform']}, {n['cpus']} CPUs",
             f"numpy {n['numpy']}; BLAS: {blas}" + (f" [{n['blas_note']}]"
                                                    if n.get("blas_note") else "")]
    if n["thread_env"]:
        lines.append("thread variables: " + ", ".join(f"{k}={v}"
                                                      for k, v in n["thread_env"].items()))
    if c.get("cupy") is None:
        lines.append("CuPy: not installed (GPU runs need pip install 'minigrad_pfa[gpu]')")
    elif not c.get("gpu"):
        lines.append(f"CuPy {c['cupy']}: no usable GPU ({c.get('reason')})")
    else:
        for g in c["gpu"]:
            lines.append(f"GPU: {g['name']}, {g['memory_gb']:.1f} GiB, compute "
                         f"{g['compute_capability']}; CuPy {c['cupy']}, CUDA runtime "
                         f"{c['cuda_runtime']}, driver {c['cuda_driver']}; TF32 "
                         f"{'on (CUPY_TF32=1)' if c['tf32'] else 'off'}")
    if c.get("standin"):
        lines.append("CuPy STAND-IN active (TEST-ONLY, MINIGRAD_PFA_CUPY_STANDIN=1): "
                     "--device cuda runs on the CPU")
    lines.append("PyTorch: " + ("not installed (bench comparisons skipped)"
                                if t["torch"] is None else
                                f"{t['torch']} (CUDA {'yes' if t['torch_cuda'] else 'no'})"))
    k = r["kernels"]
    lines.append(f"CPU kernels: {k['cpu_kernels']}; Numba " +
                 (f"{k['numba']} (--cpu-kernels numba available; threading layer "
                  + (f"{k['numba_layer']})" if k.get("numba_layer") else
                     "none thread-safe: the linear GEMMs stay on NumPy and the SGD "
                     "updates on one thread; pip install tbb)") if k["numba"] else
                  "not installed (--cpu-kernels numba needs pip install 'minigrad_pfa[jit]')"))
    lines.append("datasets: " + "; ".join(f"{k}: {v}" for k, v in r["datasets"].items()))
    return lines
