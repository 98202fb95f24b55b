"""``minigrad-pfa crosscheck``: export the golden cases, or check an implementation.

    minigrad-pfa crosscheck export DIR [--rules fa,pfa]
    minigrad-pfa crosscheck run --adapter MODULE:OBJECT [--cases DIR] [--rules ...]
                                [--json FILE] [--verbose]

``run`` exits with 0 when every case the adapter implements passes, 1 when any fails,
and 2 (one-line message) for a malformed adapter, a missing case directory, a manifest of
another schema version or a file whose hash does not match (docs/crosscheck.md).
"""
from __future__ import annotations

import importlib
import sys
import time
from collections import Counter


def _rules(values):
    """``--rules fa,pfa`` or ``--rules fa pfa`` -> ``["fa", "pfa"]`` (None when absent)."""
    if not values:
        return None
    return [r for v in values for r in v.split(",") if r]


def add_parser(sub):
    p = sub.add_parser(
        "crosscheck", help="golden cases for checking other implementations of the rules",
        description="Export the engine's golden cases (one .npz per case + manifest.json), or "
                    "check an implementation through an adapter (docs/crosscheck.md).")
    csub = p.add_subparsers(dest="crosscheck_command", metavar="ACTION")
    csub.required = True
    e = csub.add_parser("export", help="write every case to DIR",
                        description="Write one .npz per case and manifest.json to DIR "
                                    "(byte-identical for the same engine version).")
    e.add_argument("dir", help="output directory (created if needed)")
    e.add_argument("--rules", nargs="+", metavar="RULE", help="only these rules (fa,pfa or fa pfa)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_export)
    r = csub.add_parser("run", help="check an implementation",
                        description="Feed every case to an adapter and compare; exit 1 on "
                                    "any failure.")
    r.add_argument("--adapter", required=True, metavar="MODULE:OBJECT",
                   help="e.g. minigrad_pfa.crosscheck.adapters.torch_reference:adapter (a "
                        "class is instantiated without arguments)")
    r.add_argument("--cases", metavar="DIR", default=None,
                   help="an exported case directory (default: generate the cases in memory)")
    r.add_argument("--rules", nargs="+", metavar="RULE", help="only these rules")
    r.add_argument("--json", metavar="FILE", default=None, help="also write the full report")
    r.add_argument("--verbose", action="store_true",
                   help="the per-quantity table of every case, not only of failures")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_run)


def load_adapter(text: str):
    """``"package.module:name"`` -> the adapter object (a class is instantiated).

    Raises
    ------
    ValueError
        Malformed text, an import failure, or a missing attribute (one line each).
    """
    module_name, sep, attr = text.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--adapter {text!r}: expected MODULE:OBJECT, e.g. "
                         "minigrad_pfa.crosscheck.adapters.torch_reference:adapter")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--adapter {text!r}: cannot import {module_name!r} ({exc})") from None
    obj = module
    try:
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ValueError(f"--adapter {text!r}: module {module_name!r} has no "
                                 f"attribute {attr!r}")
            obj = getattr(obj, part)
        return obj() if isinstance(obj, type) else obj
    except ImportError as exc:  # an adapter whose optional dependency is missing
        raise ValueError(f"--adapter {text!r}: {exc}") from None


def _progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _cmd_export(args):
    from .crosscheck import catalogue, fileformat

    t0 = time.perf_counter()
    entries = catalogue.build_catalogue(_rules(args.rules), progress=_progress(args))
    info = fileformat.export(entries, args.dir)
    kinds = Counter(e.case.kind for e in entries)
    print(f"wrote {info['cases']} cases ({', '.join(f'{k} {n}' for k, n in kinds.items())}; "
          f"{info['bytes'] / 1e6:.1f} MB) to {args.dir} in {time.perf_counter() - t0:.1f} s; "
          f"manifest {info['manifest']}")
    return 0


def _cmd_run(args):
    from .crosscheck.adapter import validate_adapter
    from .crosscheck.checker import run

    adapter = load_adapter(args.adapter)
    validate_adapter(adapter)
    report = run(adapter, cases=args.cases, rules=_rules(args.rules), json_path=args.json,
                 progress=_progress(args), verbose=args.verbose)
    return report.exit_code
