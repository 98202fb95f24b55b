"""The BioTorch 0.0.16 adapter against the real package, the differences listed in
docs/crosscheck.md ("Measured against BioTorch 0.0.16"), and the BioTorch-fork template
on a mock module that follows the fork's naming."""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: pip install torch==2.13.0")
pytest.importorskip("biotorch.layers.fa_constructor",
                    reason="needs BioTorch: pip install --no-deps biotorch==0.0.16")

from minigrad_pfa.crosscheck import catalogue, run                       # noqa: E402
from minigrad_pfa.crosscheck.adapters.biotorch import BioTorchAdapter, RULES  # noqa: E402
from minigrad_pfa.crosscheck.adapters.biotorch_fork import ForkAdapter     # noqa: E402
from minigrad_pfa.metrics.measures import angle                          # noqa: E402

tgrad = torch.nn.grad
#: the only reasons the BioTorch adapter may skip a case (documented conventions)
SKIPS = ("BioTorch has no ", "const: BioTorch's constrain_weights")


@pytest.fixture(scope="module")
def entries():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return catalogue.build_catalogue(RULES)


def families(report):
    out = Counter()
    for r in report.results:
        out[(r.kind, r.rule, r.status)] += 1
    return out


def test_biotorch_passes_every_case_it_can_express(entries):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # BioTorch's DFA uses a deprecated hook
        report = run(BioTorchAdapter(), entries, quiet=True)
    fam = families(report)
    assert report.exit_code == 0, [(r.id, r.summary) for r in report.failed][:5]
    for r in report.results:
        if r.status == "skip":
            assert r.summary.startswith(SKIPS), r.summary
    for rule in RULES:   # Linear/Conv2d layers, trajectories, BasicBlocks, MLP and ResNet steps
        for kind, least in (("layer", 10), ("trajectory", 4), ("module", 5), ("network", 4)):
            assert fam[(kind, rule, "pass")] >= least, (kind, rule, fam)
    assert sum(v for (k, r, s), v in fam.items() if s == "pass" and k == "layer") >= 100
    sweep = [r for r in report.results if r.id.startswith("layer-sweep/")]
    assert len(sweep) >= 60 and all(r.status == "pass" for r in sweep)  # k 1-7, s 1-2, p 0-3


def test_constrain_weights_breaks_training(entries):
    """BioTorch's Const replaces the weight Parameter in forward: the optimizer built
    before keeps the old tensor, so W never moves."""
    const = [e for e in entries if e.case.kind == "trajectory" and e.case.options.get("const")]
    assert const
    report = run(BioTorchAdapter(constrain_weights=True), const, quiet=True)
    assert all(r.status == "fail" and r.summary.startswith("W differs from step 1")
               for r in report.results), [r.summary for r in report.results]
    from biotorch.layers.usf import Linear
    layer = Linear(6, 4, True, {"type": "usf", "options": {
        "constrain_weights": True, "gradient_clip": False, "init": "xavier"}})
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    w0 = layer.weight.detach().clone()
    for _ in range(3):
        layer(torch.randn(5, 6)).sum().backward()
        opt.step()
    assert torch.allclose(layer.weight, w0 * layer.norm_initial_weights / w0.norm())


def test_frsf_alignment_metric_reads_the_magnitude():
    """BioTorch's compute_alignment uses weight_backward = |M0| (about 90 degrees by
    construction); the matrix it propagates with is |M0| sign(W): acos(3/4) = 41.4
    degrees for two independent uniform matrices."""
    from biotorch.layers.frsf import Linear
    torch.manual_seed(0)
    layer = Linear(400, 300, True, {"type": "frsf", "options": {
        "constrain_weights": False, "gradient_clip": False, "init": "xavier"}})
    theirs = float(layer.compute_alignment())
    W, M = layer.weight.detach().numpy(), layer.weight_backward.detach().numpy()
    used = angle(np.abs(M) * np.sign(W), W)
    assert abs(theirs - 90.0) < 1.0
    assert abs(used - math.degrees(math.acos(0.75))) < 1.0


def test_brsf_redraws_at_every_forward_in_the_default_dtype():
    from biotorch.layers.brsf import Linear
    layer = Linear(8, 5, True, {"type": "brsf", "options": {
        "constrain_weights": False, "gradient_clip": False, "init": "xavier"}}).double()
    x = torch.randn(3, 8, dtype=torch.float64)
    layer(x)
    first = layer.weight_backward.detach().clone()
    layer(x)                                   # no optimizer step in between
    assert not torch.equal(first, layer.weight_backward)
    mags = layer.weight_backward.detach().abs()
    assert mags.dtype == torch.float64 and torch.equal(mags.float().double(), mags)


# ------------------------------------------------------------------ the fork template
class _PFAFunction(torch.autograd.Function):
    """delta_mid = delta @ B, delta_in = delta_mid @ R, gR = delta_mid.T @ x (conv too)."""

    @staticmethod
    def forward(ctx, x, W, b, B, R, stride, padding, skip_B):
        ctx.save_for_backward(x, W, B, R)
        ctx.geo, ctx.skip_B = (stride, padding), skip_B
        if W.dim() == 4:
            return torch.nn.functional.conv2d(x, W, b, stride, padding)
        return x @ W.T + (b if b is not None else 0)

    @staticmethod
    def backward(ctx, g):
        x, W, B, R = ctx.saved_tensors
        stride, padding = ctx.geo
        conv = W.dim() == 4
        B2 = B[:, :, 0, 0] if conv else B
        if ctx.skip_B:        # the deliberately wrong mock: R's gradient without B
            dmid_R = torch.cat([g] * (R.shape[0] // g.shape[1]), dim=1)
        if conv:
            dmid = torch.einsum("nohw,om->nmhw", g, B2)
            gx = tgrad.conv2d_input(x.shape, R, dmid, stride, padding)
            gW = tgrad.conv2d_weight(x, W.shape, g, stride, padding)
            gR = tgrad.conv2d_weight(x, R.shape, dmid_R if ctx.skip_B else dmid,
                                     stride, padding)
            gb = g.sum((0, 2, 3))
        else:
            dmid = g @ B2
            gx, gW, gb = dmid @ R, g.T @ x, g.sum(0)
            gR = (dmid_R if ctx.skip_B else dmid).T @ x
        return gx, gW, gb if ctx.needs_input_grad[2] else None, None, gR, None, None, None


class MockForkLayer(torch.nn.Module):
    """A stand-in for a fork PFA layer with the fork's parameter names."""

    def __init__(self, W_shape, mid, bias, stride=(1, 1), padding=(0, 0), skip_B=False):
        super().__init__()
        out = W_shape[0]
        self.weight = torch.nn.Parameter(torch.zeros(W_shape))
        self.bias = torch.nn.Parameter(torch.zeros(out)) if bias else None
        B_shape = (out, mid, 1, 1) if len(W_shape) == 4 else (out, mid)
        self.weight_backward_B = torch.nn.Parameter(torch.zeros(B_shape), requires_grad=False)
        self.weight_backward_R = torch.nn.Parameter(torch.zeros((mid,) + tuple(W_shape[1:])))
        self.geo, self.skip_B = (tuple(stride), tuple(padding)), skip_B

    def forward(self, x):
        return _PFAFunction.apply(x, self.weight, self.bias, self.weight_backward_B,
                                  self.weight_backward_R, *self.geo, self.skip_B)


def fork_adapter(skip_B=False):
    return ForkAdapter(
        linear=lambda i, o, mid, bias: MockForkLayer((o, i), mid, bias, skip_B=skip_B),
        conv2d=lambda ic, oc, k, s, p, mid, bias: MockForkLayer((oc, ic) + k, mid, bias, s, p,
                                                                skip_B=skip_B),
        name="mock-fork")


@pytest.fixture(scope="module")
def pfa_entries():
    return [e for e in catalogue.build_catalogue(["pfa"])
            if e.case.kind in ("layer", "trajectory")]


def test_fork_template_passes_with_a_correct_mock(pfa_entries):
    report = run(fork_adapter(), pfa_entries, quiet=True)
    assert report.exit_code == 0, [(r.id, r.summary) for r in report.failed][:5]
    c = report.counts
    assert c["pass"] >= 100 and all("sparse PFA" in r.summary or "SGD only" in r.summary
                                    for r in report.results if r.status == "skip")


def test_fork_template_catches_a_wrong_mock(pfa_entries):
    wrong = [e for e in pfa_entries if e.case.kind == "layer"
             and e.case.options["expand_ratio"] in (3, 10) and not e.case.options["identity"]]
    report = run(fork_adapter(skip_B=True), wrong[:6], quiet=True)
    assert all(r.status == "fail" and "R gradient differs" in r.summary
               and "input error ok" in r.summary for r in report.results), \
        [r.summary for r in report.results]


def test_fork_template_names_a_missing_parameter(pfa_entries):
    adapter = ForkAdapter(linear=lambda i, o, mid, bias: torch.nn.Linear(i, o, bias),
                          conv2d=lambda *a: None, name="plain")
    case = next(e.case for e in pfa_entries if e.case.spec["layer"] == "linear")
    with pytest.raises(ValueError, match="weight_backward_B"):
        adapter.layer(case)


@pytest.mark.parametrize("kind", ["Linear", "Conv2d"])
def test_brsf_kaiming_mode_is_broken_in_biotorch(kind):
    """BioTorch's brSF layers call ``init.kaiming_uniform_`` without importing ``init``."""
    from biotorch.layers import brsf
    cfg = {"type": "brsf", "options": {"constrain_weights": False, "gradient_clip": False,
                                       "init": "kaiming"}}
    layer = brsf.Linear(4, 3, True, cfg) if kind == "Linear" else brsf.Conv2d(2, 3, 3,
                                                                              layer_config=cfg)
    x = torch.randn(2, 4) if kind == "Linear" else torch.randn(1, 2, 5, 5)
    with pytest.raises(NameError, match="init"):
        layer(x)


def test_brsf_float32_draw_in_float64_models(entries):
    """Without the adapter's default-dtype setting, BioTorch rounds brSF's draw to float32
    in float64 models: those cases fail at about 1e-8 relative, float32 cases still pass."""
    brsf = [e for e in entries if e.case.rule == "brsf" and e.case.kind == "layer"
            and e.case.options["norm"] is None and e.case.options["feedback_density"] == 1.0]
    report = run(BioTorchAdapter(match_dtype=False), brsf, quiet=True)
    for r in report.results:
        if r.dtype == "float32":
            assert r.status == "pass", r.summary
        else:
            assert r.status == "fail" and "forward ok, input error differs" in r.summary
            rel = next(q.max_rel for q in r.quantities if q.name == "grad_input")
            assert 1e-9 < rel < 1e-6, rel
