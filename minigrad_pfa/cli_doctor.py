"""``minigrad-pfa doctor``: what this machine can run; with ``--device cuda``, proof that
the GPU path works (:mod:`minigrad_pfa.doctor`).

::

    minigrad-pfa doctor                                  # NumPy/BLAS, CuPy/CUDA, PyTorch, datasets
    minigrad-pfa doctor --device cuda --json doctor.json # + parity, steps, syncs, GPU bench
    minigrad-pfa doctor --check-threads                  # + do all cores beat one thread here?

Exit status: 0 when every check passed (and for the CPU part on a machine without a GPU,
which says so in one line), 1 when any check failed.
"""
from __future__ import annotations

import argparse
import json
import time

from .cli_doc import documented_parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = documented_parser(subparsers, "doctor",
                          "what this machine can run; --device cuda proves the GPU path",
                          __doc__)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: also run the GPU checks (parity, 10 steps per rule, host "
                        "syncs, a short bench against PyTorch)")
    p.add_argument("--json", metavar="FILE", default=None, help="write the report as JSON")
    p.add_argument("--no-bench", action="store_true", help="skip the GPU bench")
    p.add_argument("--check-threads", action="store_true",
                   help="also time ResNet-20 and MLP training steps on one thread and on the "
                        "default --threads (interleaved rounds, 10-30 s) and say whether the "
                        "cores pay on this machine (minigrad_pfa.doctor.threads)")
    p.set_defaults(func=_cmd_doctor)
    return p


def run_doctor(device: str = "cpu", json_path=None, bench: bool = True, log=print,
               check_threads: bool = False, thread_probes=None, **gpu_kw) -> int:
    from .backend import cuda_available, device_description, standin_active
    from .doctor.gpu import run_gpu_checks
    from .doctor.machine import format_machine, machine_report

    t0 = time.perf_counter()
    report = {"machine": machine_report(), "device": device}
    for line in format_machine(report["machine"]):
        log(line)
    status = 0
    if check_threads:
        from .doctor.threads import check_threads as probe
        report["threads"] = probe(probes=thread_probes, log=log)
    if device == "cuda":
        if not (cuda_available() or standin_active()):
            reason = report["machine"]["cuda"].get("reason", "no CUDA device")
            log(f"no GPU here ({reason}): GPU checks not run; the CPU part passed")
            report["gpu"] = {"skipped": reason}
        else:
            log(f"GPU checks on {device_description('cuda')}:")
            gpu = run_gpu_checks(log=log, bench=bench, **gpu_kw)
            report["gpu"] = gpu
            failed = [c for c in gpu["checks"] if not c["ok"]]
            log(f"{len(gpu['checks']) - len(failed)}/{len(gpu['checks'])} GPU checks passed"
                + (f"; FAILED: {', '.join(c['check'] + ' ' + c['rule'] for c in failed)}"
                   if failed else ""))
            status = 1 if failed else 0
    report["wall_s"] = time.perf_counter() - t0
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(report, fh, indent=1, default=str)
        log(f"wrote {json_path}")
    return status


def _cmd_doctor(args) -> int:
    return run_doctor(args.device, args.json, bench=not args.no_bench,
                      check_threads=args.check_threads)
