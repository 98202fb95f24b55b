"""The ``minigrad-pfa`` command line.

    minigrad-pfa train CONFIG [--set KEY=VALUE ...] [--device cpu|cuda] [--out DIR] [--resume RUN_DIR]
    minigrad-pfa data list | get NAME | verify NAME | path NAME
    minigrad-pfa rules                      (the rule names and their options)

Errors that a user can fix (bad config, missing data, unusable device) are printed as one
clear message with exit status 2 (3 for a diverged run or a corrupt file), without a
traceback; set ``MINIGRAD_PFA_DEBUG=1`` for the traceback.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from .backend import DeviceError


def _add_train_parser(sub):
    p = sub.add_parser("train", help="train one config (one seed)",
                       description="Train a config. The run directory gets config.yaml, "
                                   "metrics.jsonl, latest/best checkpoints and results.json.")
    p.add_argument("config", nargs="?", help="YAML config (see experiments/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=0.1 --set rule.name=pfa")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="cpu (NumPy) or cuda (CuPy); overrides the config")
    p.add_argument("--out", default="runs", help="parent directory of run directories")
    p.add_argument("--run-dir", default=None, metavar="DIR",
                   help="exact run directory (default: OUT/<config name>)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue an interrupted run from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in the run directory (a fresh train into a "
                        "used directory is refused without it)")
    p.add_argument("--init-from", metavar="RUN_DIR_OR_CKPT", default=None,
                   help="start a NEW run from another run's checkpoint (its latest.npz, or "
                        "a .npz): parameters, feedback, optimizer state and epoch carry "
                        "over; e.g. to continue a diverged run with --set optim.lr=...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of 'mpiexec -n N' (docs/scaling.md)")
    p.add_argument("--collective-timeout", type=float, default=None, metavar="S",
                   help="--distributed: seconds a rank waits for the others in one "
                        "collective before ending the job (default 300 or "
                        "$MINIGRAD_PFA_COLLECTIVE_TIMEOUT)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of the training step (batch shards, minigrad_pfa.cpu; "
                        "default: $MINIGRAD_PFA_THREADS, else the usable cores, divided "
                        "among the MPI ranks on this host with --distributed)")
    add_cpu_kernels_argument(p)
    p.set_defaults(func=_cmd_train)


def add_cpu_kernels_argument(p) -> None:
    """``--cpu-kernels numpy|numba`` (train, grid, bench; :mod:`minigrad_pfa.jit`)."""
    from .jit import CHOICES, CPU_KERNELS_ENV
    p.add_argument("--cpu-kernels", choices=CHOICES, default=None,
                   help="the CPU step's memory-bound passes: numpy (the engine's NumPy code) "
                        "or numba (compiled, the optional extra minigrad_pfa[jit]; "
                        f"minigrad_pfa.jit); default: ${CPU_KERNELS_ENV}, else numpy")


def _cmd_train(args):
    # the engine's threads for this run only (an in-process caller keeps its own setting)
    from .cpu import default_threads, using_threads
    from .jit import using_cpu_kernels
    with using_threads(args.threads if args.threads is not None
                       else default_threads(distributed=args.distributed)), \
            using_cpu_kernels(args.cpu_kernels):
        return _run_train(args)


def _run_train(args):
    from .config import load_config
    from .experiment_data import build_data
    from .train import Trainer

    from .rundir import check_fresh

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.resume:
        cfg, out_dir = _resume_config(args, overrides)
    else:
        if not args.config:
            raise ValueError("train needs a CONFIG file (or --resume RUN_DIR)")
        cfg = load_config(args.config, overrides)
        out_dir = args.run_dir or os.path.join(args.out, cfg["name"])
        check_fresh(out_dir, args.overwrite)       # before the data is loaded
    if args.distributed and (args.overwrite or args.init_from):
        raise ValueError("--distributed does not take --overwrite or --init-from yet; "
                         "prepare the run directory without --distributed")
    if args.distributed:
        from .distributed.launch import train_distributed
        train_distributed(cfg, out_dir, resume=bool(args.resume), progress=not args.no_progress,
                          command=getattr(args, "command_line", None),
                          timeout_s=args.collective_timeout)
        return 0
    data = build_data(cfg)
    trainer = Trainer(cfg, out_dir, data, progress=not args.no_progress,
                      command=getattr(args, "command_line", None), overwrite=args.overwrite,
                      init_from=args.init_from)
    if args.resume:
        trainer.resume()
    trainer.fit()
    return 0


def _resume_config(args, overrides):
    """The run's own config for ``--resume RUN_DIR``; a CONFIG given too must be the same."""
    from .config import load_config
    from .rundir import config_diff

    for flag, given in (("--init-from", args.init_from), ("--overwrite", args.overwrite)):
        if given:
            raise ValueError(f"--resume continues the run in {args.resume}; {flag} starts a "
                             f"new one: give one of them")
    if args.run_dir and os.path.abspath(args.run_dir) != os.path.abspath(args.resume):
        raise ValueError(f"--resume {args.resume} and --run-dir {args.run_dir} name different "
                         "directories; --resume alone names the run")
    cfg_path = os.path.join(args.resume, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"--resume {args.resume}: no config.yaml there (not a run "
                                "directory made by 'minigrad-pfa train')")
    cfg = load_config(cfg_path, overrides)
    if args.config:
        diff = config_diff(cfg, load_config(args.config, overrides))
        if diff:
            raise ValueError(f"--resume {args.resume}: {args.config} differs from the run's "
                             f"config.yaml in {', '.join(diff)}; resume without CONFIG (the "
                             "run's own config is used), or start a new run from its "
                             f"checkpoint with --init-from {args.resume}")
    return cfg, args.resume


def _add_rules_parser(sub):
    p = sub.add_parser("rules", help="list the learning rules and their options")
    p.set_defaults(func=_cmd_rules)


def _cmd_rules(args):
    from .rules import RULES
    from .rules.options import option_notes
    from .rules.registry import effective_options

    for name, cls in RULES.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        # the value an omitted option takes; a rule's notes add where it depends on others
        notes = option_notes(cls)
        opts = ", ".join(f"{k}={notes[k] if k in notes else repr(v)}"
                         for k, v in effective_options(name).items()) or "-"
        print(f"{name:6s} {doc}\n       options: {opts}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (no usage block), exit status 2; nested
    sub-command parsers are of this class too (argparse uses the parent's class)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(exc) -> str:
    """An error message on one line (the contract of every command's errors)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="minigrad-pfa",
        description="Explicit NumPy/CuPy engine for learning rules without weight transport.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train_parser(sub)
    _add_rules_parser(sub)
    try:
        from .cli_data import add_data_parser
        add_data_parser(sub)
    except ImportError:  # pragma: no cover - present in every release
        pass
    for name in ("cli_report", "cli_bench", "cli_grid", "cli_export", "cli_crosscheck",
                 "cli_doctor"):
        try:
            mod = __import__(f"{__package__}.{name}", fromlist=["add_parser"])
        except ImportError:
            continue
        mod.add_parser(sub)
    return parser


def main(argv=None) -> int:
    from .config import ConfigError

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["minigrad-pfa"] + argv)  # recorded in results.json
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DeviceError, OSError, ValueError) as exc:
        # user input (configs, paths, values): one line, exit 2; an OSError the code did
        # not word itself still names its file
        if os.environ.get("MINIGRAD_PFA_DEBUG"):  # full traceback for developers
            raise
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc):
            exc = f"{exc.filename}: {exc.strerror or exc}"
        print(f"minigrad-pfa {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        # divergence, corrupt checkpoints, data errors: one clear message, no traceback
        if os.environ.get("MINIGRAD_PFA_DEBUG"):
            raise
        print(f"minigrad-pfa {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        hint = {"train": "; continue with --resume RUN_DIR (the last finished epoch is "
                         "checkpointed)",
                "grid": "; run the same grid command again to continue"}.get(args.command, "")
        print(f"\ninterrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
