"""The crosscheck: catalogue, file format, checker, the engine and PyTorch adapters, and
deliberately wrong adapters that must fail on the right case and quantity."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minigrad_pfa.cli import main as cli_main
from minigrad_pfa.crosscheck import AdapterError, catalogue, fileformat, run, validate_adapter
from minigrad_pfa.crosscheck.adapters import torch_reference as torch_ref
from minigrad_pfa.crosscheck.adapters.engine import adapter as engine_adapter
from minigrad_pfa.rules import RULES, rule_options


@pytest.fixture(scope="module")
def entries():
    return catalogue.build_catalogue()


@pytest.fixture(scope="module")
def exported(entries, tmp_path_factory):
    d = tmp_path_factory.mktemp("cases")
    info = fileformat.export(entries, str(d))
    return str(d), info


def _by_id(report):
    return {r.id: r for r in report.results}


# ------------------------------------------------------------------------------ catalogue
def test_catalogue_size_and_coverage(entries, exported):
    assert len(entries) >= 300
    kinds = {e.case.kind for e in entries}
    assert kinds == {"layer", "mirror", "module", "network", "trajectory"}
    assert {e.case.rule for e in entries} == set(RULES)
    # every conv geometry of the issue: kernels 1/3/5/7, strides 1/2, paddings 0-3
    geo = {(tuple(e.case.spec["kernel_size"]), tuple(e.case.spec["stride"]),
            tuple(e.case.spec["padding"])) for e in entries
           if e.case.kind == "layer" and e.case.spec["layer"] == "conv2d"}
    for k in (1, 3, 5, 7):
        for s in (1, 2):
            for p in range(4):
                assert ((k, k), (s, s), (p, p)) in geo
    assert {e.case.dtype for e in entries} == {"float32", "float64"}
    assert exported[1]["bytes"] < 50e6


def test_every_registered_option_is_enumerated():
    """A rule option without an OPTIONS line would be unchecked: the catalogue refuses it."""
    for rule in RULES:
        for option in rule_options(rule):
            assert option in catalogue.OPTIONS, (rule, option)
    names = {p.id for p in catalogue.pending_cases()}
    # every (rule, option value) with a kind appears in some case id
    for rule in RULES:
        for option in rule_options(rule):
            values, kinds = catalogue.OPTIONS[option]
            for v in values:
                if kinds:
                    tag = catalogue.variant_name(rule, {option: v})
                    assert any(f"/{tag}/" in n for n in names), tag


def test_missing_option_line_is_an_error(monkeypatch):
    monkeypatch.delitem(catalogue.OPTIONS, "feedback_density")
    with pytest.raises(ValueError, match="feedback_density.*OPTIONS; add one line"):
        catalogue.pending_cases()


def test_cases_store_every_input_explicitly(entries):
    """No case depends on the engine's streams: per-step draws and masks are arrays."""
    by_id = {e.case.id: e for e in entries}
    brsf = by_id["layer/brsf/linear7x5/float64"].case.inputs
    assert brsf["M_t"].shape == (5, 7)
    pfa = by_id["layer/pfa[feedback_density=0.5]/linear7x5/float32"].case.inputs
    assert pfa["mask_R"].dtype == np.bool_ and pfa["R"].dtype == np.float32
    assert not np.any(pfa["R"][~pfa["mask_R"]])
    wm = by_id["trajectory/wm/momentum/linear7x5/float64"].case.inputs
    assert wm["noise"].shape == (3, 1, 6, 7)
    dfa = by_id["layer/dfa/conv3x5-k3-s2-p1/float64"].case.inputs
    assert dfa["D"].shape == (3, 3, 3, 3) and dfa["output_error"].shape == (2, 3)
    for e in entries:
        assert not any(k.endswith(("key", "draws", "mirror_count")) for k in e.case.inputs)


# ------------------------------------------------------------------------------ format
def test_export_is_deterministic(exported, tmp_path):
    d1, _ = exported
    d2 = str(tmp_path / "again")
    fileformat.export(catalogue.build_catalogue(), d2)
    files = sorted(os.path.relpath(os.path.join(r, f), d1)
                   for r, _, fs in os.walk(d1) for f in fs)
    assert len(files) > 300
    for f in files:
        with open(os.path.join(d1, f), "rb") as a, open(os.path.join(d2, f), "rb") as b:
            assert a.read() == b.read(), f


def test_files_readable_without_this_project(exported):
    """Plain numpy + json + hashlib: what a JAX/C++ user would do."""
    d, _ = exported
    with open(os.path.join(d, "manifest.json")) as fh:
        manifest = json.load(fh)
    assert manifest["schema_version"] == fileformat.SCHEMA_VERSION
    rec = next(c for c in manifest["cases"] if c["id"] == "layer/pfa/linear7x5/float64")
    data = open(os.path.join(d, rec["file"]), "rb").read()
    assert hashlib.sha256(data).hexdigest() == rec["sha256"]
    with np.load(os.path.join(d, rec["file"]), allow_pickle=False) as z:
        x, W, B, R = (z[f"inputs/{k}"] for k in ("x", "weight", "B", "R"))
        delta = z["inputs/grad_output"]
        # the equations by hand (docs/rules.md): y = x W.T + b, delta_in = (delta B) R
        np.testing.assert_allclose(z["expected/output"], x @ W.T + z["inputs/bias"], rtol=1e-12)
        np.testing.assert_allclose(z["expected/grad_input"], (delta @ B) @ R, rtol=1e-10)
        np.testing.assert_allclose(z["expected/grad_R"], (delta @ B).T @ x, rtol=1e-10)
    assert [q["name"] for q in rec["expected"]][:2] == ["output", "grad_input"]


def test_engine_passes_its_own_cases_after_a_file_round_trip(exported):
    report = run(engine_adapter, exported[0], quiet=True)
    assert report.counts["pass"] == len(report.results) > 300, \
        [r.summary for r in report.failed][:5]


# ------------------------------------------------------------------------------ torch
needs_torch = pytest.mark.skipif(torch_ref.torch is None, reason="torch is not installed")


@needs_torch
def test_torch_reference_passes_every_case(exported):
    report = run(torch_ref.adapter, exported[0], quiet=True)
    assert report.exit_code == 0
    assert report.counts["pass"] == len(report.results), \
        [f"{r.id}: {r.summary}" for r in report.failed][:5]


def _wrong(rule_cls=None, geometry_cls=None, **attrs):
    class Wrong(torch_ref.TorchReference):
        name = "wrong"
    if rule_cls is not None:
        Wrong.rule_class = rule_cls
    if geometry_cls is not None:
        Wrong.geometry_class = geometry_cls
    for k, v in attrs.items():
        setattr(Wrong, k, v)
    return Wrong()


def _fails_on(result, quantity):
    """The case failed, every quantity before ``quantity`` passed, and it did not."""
    assert result.status == "fail", (result.id, result.summary)
    names = [q.name for q in result.quantities]
    i = names.index(quantity)
    assert all(q.ok for q in result.quantities[:i]), (result.id, result.summary)
    assert not result.quantities[i].ok, (result.id, result.summary)


@needs_torch
def test_wrong_fa_using_W(entries):
    class FAUsesW(torch_ref.Rule):
        def matrix(self, W):
            return W if self.name == "fa" else super().matrix(W)
    report = run(_wrong(FAUsesW), entries, rules=["fa"], quiet=True)
    layer = [r for r in report.results if r.kind == "layer"]
    assert layer
    for r in layer:
        _fails_on(r, "grad_input")
        assert r.summary.startswith("forward ok, input error differs")
    assert all(r.status == "fail" for r in report.results if r.kind in ("network", "module"))


@needs_torch
def test_wrong_pfa_without_B(entries):
    class NoB(torch_ref.Rule):
        def input_error(self, geo, delta, x_shape, W):
            if self.name == "pfa":  # delta_in = delta @ R: only defined for mid = out
                return geo.transpose(delta, self.learned.detach(), x_shape)
            return super().input_error(geo, delta, x_shape, W)
    report = run(_wrong(NoB), entries, rules=["pfa"], quiet=True)
    res = _by_id(report)
    _fails_on(res["layer/pfa[expand_ratio=1]/linear7x5/float64"], "grad_input")
    _fails_on(res["layer/pfa[orthogonal=True]/conv3x5-k3-s2-p1/float32"], "grad_input")
    assert res["layer/pfa/linear7x5/float64"].status == "error"  # mid = 10 out: shapes
    # B = I: leaving B out is then correct, and the checker agrees
    assert res["layer/pfa[identity=True]/linear7x5/float64"].status == "pass"


@needs_torch
def test_wrong_stride(entries):
    class Stride1(torch_ref.Geometry):
        def __init__(self, spec):
            super().__init__(spec)
            self.stride = (1, 1)
    report = run(_wrong(geometry_cls=Stride1), entries, rules=["bp"], quiet=True)
    layers = [r for r in report.results if r.kind == "layer"]
    for r in layers:
        case = next(e.case for e in entries if e.case.id == r.id)
        if case.spec["layer"] == "conv2d" and max(case.spec["stride"]) > 1:
            # the output has the wrong shape: torch's backward refuses the case's error
            assert r.status == "error" and "shape" in r.summary, (r.id, r.summary)
        else:
            assert r.status == "pass", (r.id, r.summary)
    assert report.exit_code == 1 and any(r.status == "pass" for r in layers)


@needs_torch
def test_wrong_R_gradient_without_mask(entries):
    class NoMaskR(torch_ref.Rule):
        def learned_grad(self, geo, x, delta, gW):
            if self.name == "pfa":
                mid = geo.mix(delta, self.fb["B"])
                return geo.weight_grad(x, mid, self.learned.shape)
            return super().learned_grad(geo, x, delta, gW)
    report = run(_wrong(NoMaskR), entries, rules=["pfa"], quiet=True)
    for r in report.results:
        sparse = "feedback_density" in r.id
        if r.kind == "layer" and sparse:
            _fails_on(r, "grad_R")
            assert "b gradient ok, R gradient differs" in r.summary or \
                "W gradient ok, R gradient differs" in r.summary
        else:  # dense PFA; sparse trajectories: re-masking R after each step hides it
            assert r.status == "pass", (r.id, r.summary)
    assert any(r.status == "fail" for r in report.results)


@needs_torch
def test_wrong_kp_without_weight_decay_on_B(entries):
    wrong = _wrong(feedback_weight_decay=lambda self, wd: 0.0)
    report = run(wrong, entries, rules=["kp"], quiet=True)
    for r in report.results:
        if r.kind == "trajectory":
            assert r.status == "fail", r.id
            q = {x.name: x for x in r.quantities}
            assert q["weight"].ok and q["B"].ok is False and q["B"].step == 1
        else:  # one backward pass has no weight decay in it
            assert r.status == "pass", (r.id, r.summary)


@needs_torch
def test_wrong_dfa_using_the_local_delta(entries):
    class LocalDelta(torch_ref.Rule):
        def input_error(self, geo, delta, x_shape, W):
            if self.name == "dfa":  # the bug: e replaced by the layer's own delta
                D = self.fb["D"]
                return geo.transpose(delta, D, x_shape) if geo.conv and D.dim() == 4 \
                    else delta @ D
            return super().input_error(geo, delta, x_shape, W)
    report = run(_wrong(LocalDelta), entries, rules=["dfa"], quiet=True)
    res = _by_id(report)
    # out = classes (3): the shapes fit and the numbers differ
    _fails_on(res["layer/dfa/conv4x3-k5-s1-p2-nobias/float64"], "grad_input")
    # otherwise the shapes do not even fit: the adapter raises, the case fails
    assert res["layer/dfa/linear7x5/float64"].status == "error"
    assert all(r.status in ("fail", "error") for r in report.results)


# ------------------------------------------------------------------------------ errors
class _Minimal:
    name, kinds, rules = "minimal", ("layer",), ("bp",)

    def layer(self, case):
        a = case.inputs
        if case.spec["layer"] != "linear":
            raise NotImplementedError("Linear only")
        y = a["x"] @ a["weight"].T + (a["bias"] if "bias" in a else 0)
        out = {"output": y, "grad_input": a["grad_output"] @ a["weight"],
               "grad_weight": a["grad_output"].T @ a["x"]}
        if "bias" in a:
            out["grad_bias"] = a["grad_output"].sum(0)
        return out


def test_validate_adapter_errors():
    validate_adapter(_Minimal())
    bad = [(type("A", (), {"kinds": ("layer",), "rules": "*"})(), "needs a non-empty string"),
           (type("A", (), {"name": "a", "kinds": "layer", "rules": "*"})(), "needs 'kinds'"),
           (type("A", (), {"name": "a", "kinds": ("lyer",), "rules": "*"})(), "unknown case kind"),
           (type("A", (), {"name": "a", "kinds": ("layer",), "rules": "*"})(), "no callable"),
           (type("A", (), {"name": "a", "kinds": ("layer",), "rules": 3,
                           "layer": lambda s, c: {}})(), "needs 'rules'")]
    for adapter, msg in bad:
        with pytest.raises(AdapterError, match=msg) as info:
            validate_adapter(adapter)
        assert "\n" not in str(info.value)


def test_minimal_numpy_adapter_and_skips(entries):
    report = run(_Minimal(), entries, rules=["bp"], quiet=True)
    c = report.counts
    assert c["skip"] > 0 and c["error"] > 0 and c["pass"] > 0  # conv raises, other kinds skip
    assert all(r.status == "pass" for r in report.results
               if r.kind == "layer" and "linear" in r.id)


def test_file_errors(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fileformat.load(str(tmp_path / "nope"))
    d = tmp_path / "copy"
    d.mkdir()
    src = exported[0]
    manifest = json.load(open(os.path.join(src, "manifest.json")))
    rec = manifest["cases"][0]
    (d / "cases").mkdir()
    data = bytearray(open(os.path.join(src, rec["file"]), "rb").read())
    manifest["cases"] = [rec]
    json.dump(manifest, open(d / "manifest.json", "w"))
    data[-30] ^= 1
    open(d / rec["file"], "wb").write(bytes(data))
    with pytest.raises(fileformat.CaseFileError, match="sha256 .* does not match"):
        fileformat.load(str(d))
    manifest["schema_version"] = 99
    json.dump(manifest, open(d / "manifest.json", "w"))
    with pytest.raises(fileformat.CaseFileError, match="schema version 99"):
        fileformat.load(str(d))


@needs_torch
def test_cli_exit_codes(exported, tmp_path, capsys):
    d = exported[0]
    assert cli_main(["crosscheck", "run", "--adapter",
                     "minigrad_pfa.crosscheck.adapters.engine:adapter", "--cases", d,
                     "--rules", "fa,kp", "--json", str(tmp_path / "r.json"),
                     "--no-progress"]) == 0
    rep = json.load(open(tmp_path / "r.json"))
    assert rep["counts"]["pass"] > 0 and {c["rule"] for c in rep["cases"]} == {"fa", "kp"}
    # a failing adapter: exit 1, and the failure named in words
    assert cli_main(["crosscheck", "run", "--adapter", "test_crosscheck:_FAUsesWAdapter",
                     "--cases", d, "--rules", "fa", "--no-progress"]) == 1
    assert "forward ok, input error differs" in capsys.readouterr().out
    for argv, msg in (
            (["--adapter", "nocolon"], "expected MODULE:OBJECT"),
            (["--adapter", "no_such_module_x:a"], "cannot import"),
            (["--adapter", "minigrad_pfa.crosscheck:nothing"], "has no attribute"),
            (["--adapter", "test_crosscheck:_NoName"], "needs a non-empty string"),
            (["--adapter", "minigrad_pfa.crosscheck.adapters.engine:adapter", "--cases",
              str(tmp_path / "missing")], "does not exist")):
        assert cli_main(["crosscheck", "run", *argv, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err


class _NoName:
    kinds, rules = ("layer",), "*"

    def layer(self, case):
        return {}


class _FAUsesWAdapter(torch_ref.TorchReference):
    name = "fa-uses-W"

    class rule_class(torch_ref.Rule):
        def matrix(self, W):
            return W if self.name == "fa" else super().matrix(W)


def test_cli_export(tmp_path, capsys):
    assert cli_main(["crosscheck", "export", str(tmp_path / "d"), "--rules", "bp",
                     "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    manifest = json.load(open(tmp_path / "d" / "manifest.json"))
    assert manifest["cases"] and {c["rule"] for c in manifest["cases"]} == {"bp"}


def test_engine_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; "
            "import minigrad_pfa.crosscheck as c, minigrad_pfa.crosscheck.adapters.engine; "
            "from minigrad_pfa.cli_crosscheck import load_adapter\n"
            "try:\n load_adapter('minigrad_pfa.crosscheck.adapters.torch_reference:adapter')\n"
            "except ValueError as e:\n print('ERR', e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "ERR" in out and "needs torch" in out
