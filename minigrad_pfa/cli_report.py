"""``minigrad-pfa report RUN_DIR... [--out DIR] [--e5]``: Markdown tables and PNG figures."""
from __future__ import annotations



def add_parser(sub):
    p = sub.add_parser(
        "report", help="Markdown report of runs beside the published numbers, with plots",
        description="Group runs by (protocol, rule), give mean ± std over seeds of the "
                    "number comparable to the published one, the published number, the "
                    "difference, the final per-layer alignment, wall time, machine and "
                    "commands; draw accuracy curves, per-layer alignment over epochs, "
                    "accuracy against feedback density (E4) and optionally E5.")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR",
                   help="run directories, or folders searched recursively for them "
                        "(none: only the E5 analysis, with --e5)")
    p.add_argument("--out", default="report", help="output directory (default: report)")
    p.add_argument("--e5", action="store_true",
                   help="add the E5 expansion-ratio analysis (no training)")
    p.add_argument("--e5-reps", type=int, default=10,
                   help="draws per expansion ratio for --e5 (published: 100; default 10)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--markdown", metavar="FILE", default=None,
                   help="write the Markdown to FILE (e.g. RESULTS.md) instead of OUT/report.md; "
                        "figures stay in OUT and are linked relative to FILE")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args):
    from .report import write_report

    if not args.runs and not args.e5:
        raise ValueError("report needs RUN_DIR(s) (or --e5 for the E5 analysis alone)")
    if args.e5_reps < 1:
        raise ValueError(f"--e5-reps must be >= 1, got {args.e5_reps}")
    path = write_report(args.runs, args.out, e5=args.e5, e5_reps=args.e5_reps,
                        plots=not args.no_plots, command=getattr(args, "command_line", None),
                        markdown=args.markdown)
    print(f"wrote {path}")
    return 0
