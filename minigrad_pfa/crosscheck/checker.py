"""The checker: feed every case to an adapter, compare, report.

Per case and output quantity (``docs/crosscheck.md``, "Reading the output")::

    max_abs = max |got - expected|            scale = max |expected|
    max_rel = max_abs / scale                 pass  iff  max_abs <= atol + rtol * scale

A case passes when every expected quantity is present, has the expected shape, and
passes. Its one-line summary names the quantities in order up to the first that does not
("forward ok, input error ok, R gradient differs: rel 0.41"); for trajectories the first
step at which it differs is named too. An adapter that raises fails the case (the
exception is reported); a case the adapter does not implement is skipped and counted.
"""
from __future__ import annotations

import json
import sys
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .adapter import QUANTITY_WORDS, skip_reason, to_numpy_output, validate_adapter


@dataclass
class Quantity:
    """The comparison of one output quantity."""

    name: str
    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    ok: bool
    note: str = ""
    step: int | None = None   # trajectories: first step (from 1) that fails

    def as_dict(self) -> dict:
        return {"name": self.name, "max_abs": _finite(self.max_abs),
                "max_rel": _finite(self.max_rel), "rtol": self.rtol, "atol": self.atol,
                "pass": self.ok, "note": self.note, "first_failing_step": self.step}


@dataclass
class CaseResult:
    """The outcome of one case: ``status`` is ``pass``, ``fail``, ``error`` or ``skip``."""

    id: str
    kind: str
    rule: str
    dtype: str
    status: str
    summary: str
    quantities: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "rule": self.rule, "dtype": self.dtype,
                "status": self.status, "summary": self.summary,
                "quantities": [q.as_dict() for q in self.quantities]}


@dataclass
class Report:
    """Every case's result; ``exit_code`` is 1 if any case failed or errored, else 0."""

    adapter: str
    results: list

    @property
    def counts(self) -> "OrderedDict[str, int]":
        out = OrderedDict((s, 0) for s in ("pass", "fail", "error", "skip"))
        for r in self.results:
            out[r.status] += 1
        return out

    @property
    def failed(self) -> list:
        return [r for r in self.results if r.status in ("fail", "error")]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def as_dict(self) -> dict:
        return {"adapter": self.adapter, "counts": dict(self.counts),
                "cases": [r.as_dict() for r in self.results]}


def _finite(v: float):
    return v if np.isfinite(v) else str(v)


def words(name: str) -> str:
    """An output name in words: ``grad_R`` -> ``R gradient``, ``grad.fc1.weight`` ->
    ``fc1.weight gradient``."""
    if name in QUANTITY_WORDS:
        return QUANTITY_WORDS[name]
    if name.startswith("grad."):
        return f"{name[5:]} gradient"
    return name


# ------------------------------------------------------------------------------ compare
def compare(name: str, expected: np.ndarray, got, rtol: float, atol: float,
            stacked: bool = False) -> Quantity:
    """Compare one quantity; ``stacked`` (trajectories) also finds the first failing step."""
    if got is None:
        return Quantity(name, np.inf, np.inf, rtol, atol, False, "missing from the output")
    try:
        got = to_numpy_output(got)
    except Exception as exc:  # noqa: BLE001 - report whatever the adapter returned
        return Quantity(name, np.inf, np.inf, rtol, atol, False,
                        f"not convertible to an array ({type(exc).__name__})")
    if tuple(got.shape) != tuple(expected.shape):
        return Quantity(name, np.inf, np.inf, rtol, atol, False,
                        f"shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    if got.dtype.kind not in "biuf" or (expected.dtype.kind == "f" and got.dtype.kind == "b"):
        return Quantity(name, np.inf, np.inf, rtol, atol, False, f"dtype {got.dtype}")
    exp = expected.astype(np.float64)
    diff = np.abs(got.astype(np.float64) - exp)
    if diff.size and not np.all(np.isfinite(diff)):
        return Quantity(name, np.inf, np.inf, rtol, atol, False, "non-finite values")
    scale = float(np.max(np.abs(exp))) if exp.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    limit = atol + rtol * scale
    ok = max_abs <= limit
    step = None
    if not ok and stacked and diff.ndim >= 1:
        per_step = diff.reshape(diff.shape[0], -1).max(axis=1)
        step = int(np.argmax(per_step > limit)) + 1
    return Quantity(name, max_abs, max_rel, rtol, atol, ok, step=step)


def summarise(quantities: list, steps: int | None = None) -> str:
    """``"forward ok, input error ok, R gradient differs: rel 0.41"``."""
    oks = []
    for q in quantities:
        if q.ok:
            oks.append(f"{words(q.name)} ok")
            continue
        if q.note:
            bad = f"{words(q.name)}: {q.note}"
        else:
            where = f" from step {q.step} of {steps}" if q.step is not None and steps else ""
            bad = f"{words(q.name)} differs{where}: rel {q.max_rel:.2g}"
        if len(oks) > 4:
            oks = oks[:3] + [f"{len(oks) - 3} more ok"]
        return ", ".join(oks + [bad])
    return f"all {len(quantities)} quantities ok" if len(quantities) > 4 else ", ".join(oks)


def check_case(adapter, entry) -> CaseResult:
    """Run one case on ``adapter`` and compare every expected output."""
    c = entry.case
    head = (c.id, c.kind, c.rule, c.dtype)
    reason = skip_reason(adapter, c)
    if reason is not None:
        return CaseResult(*head, "skip", reason)
    try:
        outputs = getattr(adapter, c.kind)(c)
    except Exception as exc:  # noqa: BLE001 - an adapter failure is a failed case
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return CaseResult(*head, "error", f"adapter raised {type(exc).__name__}: {msg}")
    if not isinstance(outputs, dict):
        return CaseResult(*head, "error", f"adapter returned {type(outputs).__name__}, "
                                          "expected a dict of arrays")
    rtol, atol = float(entry.tolerance["rtol"]), float(entry.tolerance["atol"])
    stacked = c.kind == "trajectory"
    quantities = [compare(name, exp, outputs.get(name), rtol, atol, stacked)
                  for name, exp in entry.expected.items()]
    steps = c.spec.get("steps") if stacked else None
    status = "pass" if all(q.ok for q in quantities) else "fail"
    return CaseResult(*head, status, summarise(quantities, steps), quantities)


# ------------------------------------------------------------------------------ report
def _table(result: CaseResult) -> list[str]:
    rows = [f"      {'quantity':30s} {'max abs':>10s} {'max rel':>10s} {'rtol':>8s}  pass"]
    for q in result.quantities:
        mark = "ok" if q.ok else ("FAIL" + (f" ({q.note})" if q.note else "") +
                                  (f" (step {q.step})" if q.step else ""))
        rows.append(f"      {q.name:30s} {q.max_abs:10.2e} {q.max_rel:10.2e} {q.rtol:8.0e}  {mark}")
    return rows


def print_report(report: Report, out=None, verbose: bool = False) -> None:
    """One line per case (the per-quantity table for failures, or for all with
    ``verbose``), then the counts."""
    out = out if out is not None else sys.stdout
    for r in report.results:
        worst = max((q.max_rel / q.rtol for q in r.quantities if q.rtol), default=0.0)
        tag = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skip": "skip"}[r.status]
        extra = f"  (worst rel/rtol {worst:.2g})" if r.status == "pass" else ""
        print(f"{tag:5s} {r.id}: {r.summary}{extra}", file=out)
        if r.quantities and (verbose or r.status == "fail"):
            print("\n".join(_table(r)), file=out)
    c = report.counts
    print(f"crosscheck {report.adapter}: {c['pass']} passed, {c['fail']} failed, "
          f"{c['error']} errors, {c['skip']} skipped (of {len(report.results)} cases)",
          file=out)


def _entries(cases, rules):
    from . import catalogue, fileformat
    if cases is None:
        return catalogue.build_catalogue(rules)
    if isinstance(cases, (str, bytes)) or hasattr(cases, "__fspath__"):
        return fileformat.load(str(cases), rules)
    return [e for e in cases if rules is None or e.case.rule in rules]


def run(adapter, cases=None, rules=None, json_path=None, progress=False, out=None,
        verbose=False, quiet=False) -> Report:
    """Check ``adapter`` on every case.

    Parameters
    ----------
    adapter : object following :mod:`minigrad_pfa.crosscheck.adapter`'s protocol.
    cases : None, str or list of Entry
        None: generate the catalogue in memory; a directory written by
        ``minigrad-pfa crosscheck export``; or entries.
    rules : iterable of str, optional
        Only cases of these rules.
    json_path : str, optional
        Also write the full report as JSON.
    progress : bool
        tqdm progress bar on stderr.
    out : file, optional
        Where the report is printed (stdout); ``quiet`` prints nothing.

    Returns
    -------
    Report (``report.exit_code`` is 1 on any failure).

    Raises
    ------
    AdapterError
        Malformed or incomplete adapter (checked before anything runs).
    FileNotFoundError, CaseFileError
        Missing case directory, wrong schema version, hash mismatch.
    ValueError
        No case ran (every case was skipped or filtered out).
    """
    validate_adapter(adapter)
    rules = None if rules is None else list(rules)
    entries = _entries(cases, rules)
    from tqdm.auto import tqdm
    results = [check_case(adapter, e) for e in tqdm(
        entries, desc=f"crosscheck {adapter.name}", disable=not progress, unit="case",
        file=sys.stderr, leave=False)]
    report = Report(adapter.name, results)
    if not quiet:
        print_report(report, out, verbose)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(report.as_dict(), fh, indent=1)
            fh.write("\n")
    if report.counts["skip"] == len(results):
        raise ValueError(f"crosscheck: adapter {adapter.name!r} ran none of the "
                         f"{len(results)} cases (kinds {list(adapter.kinds)}, rules "
                         f"{adapter.rules!r}{', filter ' + str(rules) if rules else ''})")
    return report
