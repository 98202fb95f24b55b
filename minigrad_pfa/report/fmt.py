"""Markdown formatting shared by the report's sections."""
from __future__ import annotations

import json
import os
import re

DASH = "—"


def pm(m, s, digits=2) -> str:
    if m is None:
        return DASH
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def hms(seconds) -> str:
    if seconds is None:
        return DASH
    s = int(round(seconds))
    return f"{seconds:.1f} s" if seconds < 60 else f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


#: what platform.machine() reports: a results.json whose processor is only this names no
#: CPU model (runs finished before the trainer recorded /proc/cpuinfo's model name)
ARCHITECTURES = {"x86_64", "amd64", "aarch64", "arm64", "i386", "i686", "ppc64le", "s390x"}
#: marks a machine taken from a hosts.json (:func:`hosts_file_model`)
FROM_HOSTS = "†"


def bare_architecture(r) -> bool:
    """True for a finished run whose results.json names only the architecture."""
    m = (r.results or {}).get("machine") or {}
    return r.complete and str(m.get("processor", "")).lower() in ARCHITECTURES


def hosts_file_model(r) -> str | None:
    """The CPU model that a ``hosts.json`` in a directory above the run assigns to it by its
    creation time (run.json's ``created``), for runs that recorded none; else None.

    ``hosts.json``: ``{"hosts": [{"model": ..., "created_from": "YYYY-MM-DD HH:MM:SS",
    "created_until": ...}, ...]}`` (either bound may be absent), the project's record of
    which machine its sessions ran on.
    """
    try:
        with open(os.path.join(r.path, "run.json")) as fh:
            created = json.load(fh).get("created")
    except (OSError, ValueError):
        return None
    d = os.path.dirname(os.path.abspath(r.path))
    while created:
        path = os.path.join(d, "hosts.json")
        if os.path.exists(path):
            with open(path) as fh:
                for h in json.load(fh).get("hosts", []):
                    if h.get("created_from", "") <= created < h.get("created_until", "~"):
                        return h["model"]
            return None
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent
    return None


def machine_label(r: RunData) -> str:
    if not r.results:
        return DASH
    m = r.results.get("machine") or {}
    cpus = f", {m['cpus']} CPUs" if m.get("cpus") else ""
    processor = m.get("processor", "?")
    if bare_architecture(r):
        model = hosts_file_model(r)
        processor = f"{model} {FROM_HOSTS}" if model else processor
    return f"{m.get('node', '?')} ({processor}{cpus}; {r.results.get('device', '?')})"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]
