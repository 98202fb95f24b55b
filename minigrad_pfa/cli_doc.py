"""Subcommand parsers whose help text is their module's docstring.

A subcommand module's docstring is laid out as four paragraphs: the title line, ``::``, the
indented examples and the description; :func:`documented_parser` turns them into the
subcommand's description and "examples:" epilog, so ``--help`` and the module's own
documentation are one text.
"""
from __future__ import annotations

import argparse


def documented_parser(subparsers, name: str, help: str, doc: str) -> argparse.ArgumentParser:
    """``subparsers.add_parser(name)`` with ``doc``'s description and examples."""
    _, _, examples, body = doc.split("\n\n", 3)
    return subparsers.add_parser(
        name, help=help, description=body.strip(), epilog="examples:\n" + examples.strip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
