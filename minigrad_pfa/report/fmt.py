"""Markdown formatting shared by the report's sections."""
from __future__ import annotations

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


def machine_label(r: RunData) -> str:
    if not r.results:
        return DASH
    m = r.results.get("machine") or {}
    cpus = f", {m['cpus']} CPUs" if m.get("cpus") else ""
    return f"{m.get('node', '?')} ({m.get('processor', '?')}{cpus}; {r.results.get('device', '?')})"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]
