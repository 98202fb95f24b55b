"""The benchmark harness: FLOP counts (hand counts and PyTorch's FLOP counter), the
published-PFA PyTorch functions (against autograd), target evaluation, and a tiny
end-to-end run through the command line (JSON schema, Markdown report)."""
import importlib.util
import json
import time

import numpy as np
import pytest

from minigrad_pfa.bench.flops import LayerGeometry, layer_flops, model_geometry, step_flops
from minigrad_pfa.bench.suite import MODELS, build_suite, rule_spec
from minigrad_pfa.bench.targets import evaluate_targets
from minigrad_pfa.nn.layers import Conv2d, Flatten, Linear, ReLU, Sequential
from minigrad_pfa.nn.models import build_model, finalize

# ------------------------------------------------------------------------ FLOP counts


def test_conv_layer_flops_hand_count():
    # conv 3 -> 16, 3x3, 32x32 output, batch 2: N = 2048 positions, K = 27
    g = LayerGeometry.conv("c", ic=3, oc=16, kh=3, kw=3, oh=32, ow=32)
    one = 2 * 2048 * 16 * 27                    # one (N, K) x (K, out) GEMM
    assert one == 1_769_472
    t = layer_flops(g, 2, "bp")
    assert (t["forward"], t["weight_grad"], t["input_error"], t["feedback"]) == \
        (one, one, one, 0)
    assert t["total"] == 5_308_416
    # the first layer sends no error down
    first = LayerGeometry.conv("c", 3, 16, 3, 3, 32, 32, needs_input_error=False)
    assert layer_flops(first, 2, "bp")["total"] == 2 * one
    # DFA: e (10 classes) broadcast over the grid, through D (10, 3, 3, 3)
    assert layer_flops(g, 2, "dfa")["input_error"] == 2 * 2048 * 10 * 27
    # WM: + noise forward + Hebbian, both of the forward's size
    assert layer_flops(g, 2, "wm")["total"] == 5 * one


def test_pfa_conv_flops_both_orders_hand_count():
    # conv 8 -> 4, 3x3, 5x5 output, batch 3, r = 2: N = 75, K = 72, mid = 8
    g = LayerGeometry.conv("c", ic=8, oc=4, kh=3, kw=3, oh=5, ow=5)
    N, out, K, mid = 75, 4, 72, 8
    literal = (2 * N * out * mid      # delta_mid = delta @ B
               + 2 * N * mid * K      # gR = delta_mid.T @ col
               + 2 * N * mid * K)     # dx = col2im(delta_mid @ Rmat)
    fast = (2 * out * mid * K         # M = B @ R
            + 2 * mid * out * K       # gR = B.T @ gW
            + 2 * N * out * K)        # dx = col2im(delta @ Mmat)
    assert (literal, fast) == (4800 + 86400 + 86400, 4608 + 4608 + 43200)
    base = 2 * N * out * K
    for order, extra in (("literal", literal), ("fast", fast)):
        t = layer_flops(g, 3, "pfa", mid=mid, order=order)
        assert t["feedback"] == extra and t["input_error"] == 0
        assert t["total"] == 2 * base + extra
    assert layer_flops(g, 3, "pfa", mid=mid)["feedback"] == min(literal, fast)
    # published: the literal order plus a forward conv with R kept for its shape
    assert layer_flops(g, 3, "pfa", mid=mid, published=True)["feedback"] == \
        literal + 2 * N * mid * K


def test_linear_flops_hand_count():
    g = LayerGeometry.linear("fc1", 784, 512)
    one = 2 * 64 * 784 * 512
    assert one == 51_380_224
    assert layer_flops(g, 64, "bp")["total"] == 3 * one
    # PFA r = 10 (mid 5120) at batch 64: literal vs fast
    literal = 2 * 64 * 512 * 5120 + 2 * 2 * 64 * 5120 * 784
    fast = 2 * 2 * 512 * 5120 * 784 + one
    t = layer_flops(g, 64, "pfa", mid=5120)
    assert t["feedback"] == min(literal, fast) == literal  # the MLP picks the literal order


def test_model_geometry_reads_layer_shapes():
    model = finalize(Sequential(Conv2d(3, 4, 3, stride=2, padding=1), ReLU(), Flatten(),
                                Linear(4 * 5 * 5, 10)))
    geoms = model_geometry(model, (3, 9, 9))
    assert [(g.out, g.K, g.positions, g.needs_input_error) for g in geoms] == \
        [(4, 27, 25, False), (10, 100, 1, True)]
    # batch 2, BP: conv forward + weight grad (no input error), linear all three
    assert step_flops(geoms, "bp", 2)["total"] == 2 * (2 * 50 * 4 * 27) + 3 * (2 * 2 * 10 * 100)
    assert model.training and not model[0].cache  # flags restored, caches cleared


@pytest.mark.parametrize("model_key", ["resnet20-tiny", "mlp-tiny"])
@pytest.mark.parametrize("rule", ["bp", "pfa-r3"])
def test_step_flops_match_torch_flop_counter(model_key, rule):
    """PyTorch's own FLOP counter on the PyTorch twin (autograd BP / published PFA)."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from minigrad_pfa.bench.torch_models import build_torch_model
    spec = MODELS[model_key]
    geoms = model_geometry(build_model(spec["name"], **spec["kwargs"]), spec["input"])
    torch.manual_seed(0)
    m = build_torch_model(spec, rule)
    x, y = torch.randn((3,) + tuple(spec["input"])), torch.randint(0, 10, (3,))
    with FlopCounterMode(display=False) as fc:
        torch.nn.functional.cross_entropy(m(x), y).backward()
    assert step_flops(geoms, rule, 3, impl="torch")["total"] == fc.get_total_flops()


# ------------------------------------------------------- published PFA in PyTorch


def _torch64():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch


def test_published_pfa_conv_function_against_autograd():
    torch = _torch64()
    import torch.nn.functional as F

    from minigrad_pfa.bench.torch_models import PublishedPFAConv2dFunction as Fn
    d = dict(dtype=torch.float64)
    x = torch.randn(2, 3, 7, 7, **d, requires_grad=True)
    W = torch.randn(4, 3, 3, 3, **d, requires_grad=True)
    R = torch.randn(12, 3, 3, 3, **d, requires_grad=True)
    B = torch.randn(4, 12, **d)
    b = torch.randn(4, **d, requires_grad=True)
    y = Fn.apply(x, W, R, B, b, (2, 2), (1, 1))
    assert torch.allclose(y, F.conv2d(x, W, b, 2, 1))
    delta = torch.randn_like(y)
    dx, gW, gR, gb = torch.autograd.grad(y, (x, W, R, b), delta)
    # independent: autograd of <delta_mid, conv(x, R)> with delta_mid = delta @ B (channels)
    delta_mid = torch.einsum("nohw,om->nmhw", delta, B)
    x2 = x.detach().requires_grad_()
    R2 = R.detach().requires_grad_()
    dx_ref, gR_ref = torch.autograd.grad(F.conv2d(x2, R2, None, 2, 1), (x2, R2), delta_mid)
    W2 = W.detach().requires_grad_()
    gW_ref, = torch.autograd.grad(F.conv2d(x.detach(), W2, None, 2, 1), (W2,), delta)
    for a, r in ((dx, dx_ref), (gR, gR_ref), (gW, gW_ref), (gb, delta.sum((0, 2, 3)))):
        assert torch.allclose(a, r, rtol=1e-10, atol=1e-10)
    # gR = B.T @ gW exactly (B is 1x1)
    assert torch.allclose(gR, torch.einsum("om,oikl->mikl", B, gW), rtol=1e-10, atol=1e-10)


def test_published_pfa_linear_with_identity_feedback_is_bp():
    torch = _torch64()
    import torch.nn.functional as F

    from minigrad_pfa.bench.torch_models import PublishedPFALinearFunction as Fn
    d = dict(dtype=torch.float64)
    x = torch.randn(5, 6, **d, requires_grad=True)
    W = torch.randn(3, 6, **d, requires_grad=True)
    R = W.detach().clone().requires_grad_()
    b = torch.randn(3, **d, requires_grad=True)
    y = Fn.apply(x, W, R, torch.eye(3, **d), b)
    delta = torch.randn_like(y)
    dx, gW, gR, gb = torch.autograd.grad(y, (x, W, R, b), delta)
    x2, W2, b2 = (t.detach().requires_grad_() for t in (x, W, b))
    ref = torch.autograd.grad(F.linear(x2, W2, b2), (x2, W2, b2), delta)
    for a, r in zip((dx, gW, gb), ref):
        assert torch.allclose(a, r, rtol=1e-12, atol=1e-12)
    assert torch.allclose(gR, gW)


def test_first_layer_input_error_is_skipped():
    torch = _torch64()
    from minigrad_pfa.bench.torch_models import PublishedPFAConv2dFunction as Fn
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)  # no gradient wanted
    W = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    R = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    y = Fn.apply(x, W, R, torch.randn(3, 6, dtype=torch.float64), None, (1, 1), (1, 1))
    y.sum().backward()
    assert W.grad is not None and R.grad is not None and x.grad is None


# ------------------------------------------------------------------- suite & targets


def test_rule_labels():
    assert rule_spec("bp") == {"name": "bp"}
    assert rule_spec("pfa-o") == {"name": "pfa", "orthogonal": True}
    assert rule_spec("pfa-r30") == {"name": "pfa", "expand_ratio": 30}
    assert rule_spec("pfa-r10-literal") == {"name": "pfa", "expand_ratio": 10,
                                            "order": "literal"}
    with pytest.raises(ValueError, match="unknown rule label 'pfa10'"):
        rule_spec("pfa10")
    suite = build_suite("full", "cpu", torch_ok=True)
    full = [c for c in suite if c["kind"] == "step"]
    # same-process comparisons (CPU): BP, PFA r = 1/10/30 and PyTorch's BP at the reference
    # batch; BP and PyTorch's BP at the other batches the targets read and on the MLP
    same = [(c["model"], c["batch"], c["rules"]) for c in suite if c["kind"] == "samestep"]
    assert same == [("resnet20", 128, ["bp", "pfa-r1", "pfa-r10", "pfa-r30", "torch:bp"]),
                    ("resnet20", 32, ["bp", "torch:bp"]), ("resnet20", 256, ["bp", "torch:bp"]),
                    ("mlp", 64, ["bp", "torch:bp"])]
    assert [(c["model"], c["rules"]) for c in build_suite("full", "cpu", torch_ok=False)
            if c["kind"] == "samestep"] == [("resnet20", ["bp", "pfa-r1", "pfa-r10", "pfa-r30"])]
    assert not any(c["kind"] == "samestep" for c in build_suite("full", "cuda", True))
    # the GEMM peak precedes the reference BP step alone, in every mode
    for mode, b in (("full", 128), ("quick", 32), ("tiny", 4)):
        marked = [c for c in build_suite(mode, "cpu", True, profile=True, proposals=True)
                  if c.get("gemm_before")]
        assert [(c["rule"], c["impl"], c["batch"], c["group"]) for c in marked] == \
            [("bp", "minigrad", b, "resnet")]
    resnet = {(c["rule"], c["impl"]) for c in full if c["model"] == "resnet20"
              and c["batch"] == 128}
    for rule in ("bp", "fa", "usf", "dfa", "kp", "pfa-r1", "pfa-r10", "pfa-r30", "pfa-o",
                 "pfa-r10-literal"):
        assert (rule, "minigrad") in resnet
    assert {("bp", "torch"), ("pfa-r10", "torch")} <= resnet
    assert {c["batch"] for c in full if c["model"] == "resnet20"} == {32, 64, 128, 256}
    # at least 5 timed steps pooled over the interleaved rounds ('once': first only)
    from minigrad_pfa.bench.regimes import ROUNDS
    assert all(c["steps"] * (1 if c.get("once") else ROUNDS["full"]) >= 5 for c in full)
    assert not any(c.get("impl") == "torch" for c in build_suite("full", "cpu", torch_ok=False))


def _rec(model, rule, impl, batch, step_s, **kw):
    return dict(model=model, rule=rule, impl=impl, device="cpu", batch=batch, step_s=step_s,
                peak_mb=kw.pop("peak_mb", 100.0), gflops=kw.pop("gflops", 1.0), **kw)


def test_targets_from_hand_made_records():
    recs = [_rec("resnet20", "bp", "minigrad", 128, 1.0, gflops=20.0),
            _rec("resnet20", "pfa-r10", "minigrad", 128, 1.2, peak_mb=1600.0),
            _rec("resnet20", "pfa-r10-literal", "minigrad", 128, 10.0),
            _rec("resnet20", "pfa-r1", "minigrad", 128, 1.1),
            _rec("resnet20", "pfa-r30", "minigrad", 128, 1.32),
            _rec("resnet20", "bp", "torch", 128, 0.4),
            _rec("resnet20", "pfa-r10", "torch", 128, 6.0),
            _rec("mlp", "bp", "minigrad", 64, 0.0105),
            _rec("mlp", "bp", "torch", 64, 0.010)]
    data = {"machine": {"mode": "full", "device_kind": "cpu"}, "gemm_peak_gflops": 100.0,
            "records": recs}
    t = {x["key"]: x for x in evaluate_targets(data)}
    expect = {"resnet_pfa_vs_bp": (1.2, True), "resnet_pfa_vs_literal": (0.12, True),
              "resnet_pfa_r_spread": (0.2, True), "resnet_pfa_vs_torch_published": (0.2, True),
              "resnet_bp_vs_torch": (2.5, False), "resnet_bp_gemm_fraction": (0.2, False),
              "mlp_bp_vs_torch": (1.05, True), "resnet_pfa_peak_mb": (1600.0, False)}
    for key, (value, met) in expect.items():
        assert t[key]["value"] == pytest.approx(value), key
        assert t[key]["met"] is met, key
    # missing records: reported, not guessed
    data["records"] = recs[:1]
    assert {x["key"]: x["value"] for x in evaluate_targets(data)}["resnet_pfa_vs_bp"] is None


def test_worker_env_pins_threads():
    from minigrad_pfa.bench.runner import THREAD_VARS, worker_env
    env = worker_env(3)
    assert all(env[v] == "3" for v in THREAD_VARS)
    import minigrad_pfa
    import os
    assert os.path.dirname(os.path.dirname(minigrad_pfa.__file__)) in \
        env["PYTHONPATH"].split(os.pathsep)


# ------------------------------------------------------------ tiny end-to-end run


def test_tiny_run_json_schema_and_markdown(tmp_path, capsys):
    from minigrad_pfa.cli import main
    js, md = tmp_path / "bench.json", tmp_path / "performance.md"
    rc = main(["bench", "--tiny", "--threads", "1", "--timer", "cpu", "--proposals",
               "--profile", "--json", str(js), "--markdown", str(md)])
    assert rc == 0, capsys.readouterr().out
    data = json.loads(js.read_text())
    assert {"machine", "gemm_peak_gflops", "records"} <= set(data)
    m = data["machine"]
    assert m["threads"] == 1 and m["mode"] == "tiny" and m["device_kind"] == "cpu"
    assert m["timer"] == "cpu"
    assert len(m["load_average_start"]) == 3 and len(m["load_average_end"]) == 3
    assert m["blas_threads_observed"] in (1, None)  # None only where OpenBLAS is not found
    assert isinstance(data["gemm_peak_gflops"], float) and data["gemm_peak_gflops"] > 0
    # the peak measured again in every round, right before the reference BP step; their
    # median is the peak the fractions use
    blk = data["regimes"][0]
    rp = blk["gemm_round_gflops"]
    assert len(rp) == m["rounds"] and all(p > 0 for p in rp)
    assert data["gemm_peak_gflops"] == blk["gemm_peak_gflops"] == \
        pytest.approx(float(np.median(rp)))
    have_torch = m["torch_installed"]
    seen = set()
    for r in data["records"]:
        assert not r.get("error"), r
        for key, typ in (("model", str), ("rule", str), ("impl", str), ("device", str),
                         ("batch", int), ("step_s", float), ("peak_mb", float),
                         ("gflops", float)):
            assert isinstance(r[key], typ), key
        assert r["step_s"] > 0 and r["peak_mb"] > 0 and r["gflops"] > 0
        assert len(r["step_times_s"]) >= 5 and r["threads"] == 1
        assert r["step_s"] == pytest.approx(float(np.median(r["step_times_s"])))
        assert r["timer"] == "cpu" and r["step_cpu_s"] == r["step_s"] and r["step_wall_s"] > 0
        seen.add((r["model"], r["rule"], r["impl"]))
    assert {("resnet20-tiny", "bp", "minigrad"), ("resnet20-tiny", "pfa-r10", "minigrad"),
            ("resnet20-tiny", "pfa-r10-literal", "minigrad"), ("mlp-tiny", "bp", "minigrad")} \
        <= seen
    if have_torch:
        assert {("resnet20-tiny", "bp", "torch"), ("resnet20-tiny", "pfa-r10", "torch")} <= seen
    proto = [r for r in data["records"] if r.get("variants")]
    assert proto and proto[0]["variants"] == ["spin-pool"]
    assert {r["model"] for r in data["records"] if r.get("group") == "proposal"} == \
        {"resnet20-tiny", "mlp-tiny"}
    lit = next(r for r in data["records"] if r["rule"] == "pfa-r10-literal")
    assert lit["pfa_orders"] == {"fast": 0, "literal": 20}  # ResNet-20 has 20 weight layers
    assert {t["key"] for t in data["targets"]} >= {"resnet_pfa_vs_bp", "mlp_bp_vs_torch"}
    text = md.read_text()
    assert "## Machine" in text and "## 1 thread (issue 6's targets)" in text
    assert "### Targets" in text and data["regimes"][0]["threads"] == 1
    assert data["machine"]["blas_pools"] is None or \
        any(p["user_api"] == "blas" for p in data["machine"]["blas_pools"])
    assert "pfa-r10-literal" in text and m["processor"] in text
    assert data["profiles"] and all(not p.get("error") for p in data["profiles"])
    ops = data["allcore"]["ops"]["1"]  # the all-core breakdown ran (one regime here)
    assert ops["step_s"] > 0 and ops["operations"]["conv forward"]["s"] > 0
    assert ops["rounds"] == data["machine"]["rounds"]  # one run per round, the fastest kept
    assert data["allcore"]["scaling"]["threads"] == 1
    # the steps compared in one process (.samestep), read by the ratio targets
    same = data["regimes"][0]["samesteps"][0]
    assert not same.get("error"), same
    assert len(same["round_foreign_cores"]) == same["rounds"]
    assert same["foreign_cores"] == max(same["round_foreign_cores"])
    assert list(same["rules"]) == ["bp", "pfa-r1", "pfa-r10", "pfa-r30"] + (
        ["torch:bp"] if have_torch else [])
    if have_torch:  # BP / PyTorch's BP from one process too, the MLP's in its own comparison
        mlp = data["regimes"][0]["samesteps"][1]
        assert (mlp["model"], list(mlp["rules"])) == ("mlp-tiny", ["bp", "torch:bp"])
        for key, src in (("resnet_bp_vs_torch", same), ("mlp_bp_vs_torch", mlp)):
            t = next(t for t in data["targets"] if t["key"] == key)
            assert t["value"] == pytest.approx(src["rules"]["bp"]["step_s"] /
                                               src["rules"]["torch:bp"]["step_s"])
            assert "one process" in t["detail"]
        # the per-process ratio beside it where the run has both records (tiny mode has no
        # per-process PyTorch MLP step)
        assert "separate processes" in next(t["detail"] for t in data["targets"]
                                            if t["key"] == "resnet_bp_vs_torch")
        assert "| bp (PyTorch autograd) |" in md.read_text()
    assert same["timer"] == "cpu" and same["threads"] == 1 and same["batch"] == 4
    assert all(len(v["round_s"]) == same["rounds"] == 2 for v in same["rules"].values())
    t = next(t for t in data["targets"] if t["key"] == "resnet_pfa_vs_bp")
    assert t["value"] == pytest.approx(same["rules"]["pfa-r10"]["ratio"])
    assert "one process" in t["detail"] and "separate processes" in t["detail"]
    assert "### Steps compared in one process (1 thread(s))" in text
    assert "right before the reference BP step" in text
    bp = next(r for r in data["records"] if r["model"] == "resnet20-tiny" and
              r["rule"] == "bp" and r["impl"] == "minigrad" and not r.get("variants"))
    assert bp["gemm_fraction"] == pytest.approx(bp["gflops"] / float(np.median(rp)))
    # the GEMM fraction target: the peak measured in the comparison's worker right before
    # BP's steps in every round, each round against its own
    peaks = same["gemm_round_gflops"]
    assert same["gemm_size"] == 256 and len(peaks) == same["rounds"] and min(peaks) > 0
    t = next(t for t in data["targets"] if t["key"] == "resnet_bp_gemm_fraction")
    sbp = same["rules"]["bp"]
    assert t["value"] == pytest.approx(bp["flops"] / sbp["step_s"] / 1e9 / np.median(peaks))
    assert t["rounds"] == pytest.approx([bp["flops"] / s_ / 1e9 / p
                                         for s_, p in zip(sbp["round_s"], peaks)])
    assert "right before BP's steps" in t["detail"] and "separate processes" in t["detail"]
    assert "right before bp's steps in each round" in text
    # the in-process peak is the best of as many calls as the per-process one (a best of
    # fewer tries reads lower and would flatter the fraction)
    from minigrad_pfa.bench.worker import GEMM_REPEATS
    assert same["gemm_repeats"] == GEMM_REPEATS
    assert data["gemm"]["numpy"]["repeats"] == GEMM_REPEATS
    assert f"best of {GEMM_REPEATS}) right before bp's steps" in text


def _targets_data(same=None, threads=2, foreign=0.0):
    """A minimal run: per-process records of BP and PFA r = 1/10/30 (ResNet-20, batch 128)
    and optionally a same-process comparison."""
    recs = [{"model": "resnet20", "rule": r, "impl": "minigrad", "batch": 128,
             "device": "cpu", "step_s": t, "foreign_cores": foreign, "gflops": 60.0,
             "peak_mb": 500.0}
            for r, t in (("bp", 0.40), ("pfa-r1", 0.40), ("pfa-r10", 0.50), ("pfa-r30", 0.45))]
    data = {"machine": {"threads": threads, "device_kind": "cpu", "mode": "full"},
            "records": recs, "gemm_peak_gflops": 200.0}
    if same is not None:
        data["samestep"] = same
    return data


def _same(steps, foreign=0.0, rounds=None, **kw):
    bp = steps["bp"]
    ratios = {r: (rounds or {}).get(r, [t / bp] * 3) for r, t in steps.items()}
    rules = {r: {"step_s": t, "ratio": t / bp, "round_ratios": ratios[r],
                 "round_s": [bp * q for q in ratios[r]]} for r, t in steps.items()}
    return dict({"kind": "samestep", "model": "resnet20", "batch": 128, "rounds": 3,
                 "steps": 3, "rules": rules, "foreign_cores": foreign}, **kw)


def test_pfa_targets_read_the_same_process_comparison():
    """PFA / BP and the PFA spread come from the rules stepped in one process when the run
    has them (the per-process figures quoted beside), from the records otherwise."""
    from minigrad_pfa.bench.targets import evaluate_targets

    def get(data, key):
        return next(t for t in evaluate_targets(data) if t["key"] == key)

    # per-process records alone: PFA 1.25x BP (not met), spread 0.25 (not met)
    alone = _targets_data()
    assert get(alone, "resnet_pfa_vs_bp")["value"] == pytest.approx(1.25)
    assert get(alone, "resnet_pfa_vs_bp")["met"] is False
    assert get(alone, "resnet_pfa_r_spread")["value"] == pytest.approx(0.25)
    # the same run with a same-process comparison: 1.05x and spread 0.05, both met
    same = _same({"bp": 0.40, "pfa-r1": 0.42, "pfa-r10": 0.42, "pfa-r30": 0.441})
    data = _targets_data(same)
    t = get(data, "resnet_pfa_vs_bp")
    assert t["value"] == pytest.approx(1.05) and t["met"] is True
    assert "one process, 3 interleaved rounds" in t["detail"]
    assert "separate processes: 1.25" in t["detail"]
    s = get(data, "resnet_pfa_r_spread")
    assert s["value"] == pytest.approx(0.05) and s["met"] is True
    assert "separate processes: 0.25" in s["detail"] and s["rounds"] is None
    # other targets still read the records
    assert get(data, "resnet_bp_gemm_fraction")["value"] == pytest.approx(0.3)
    # its own rounds decide the side: one round above 1.1 -> undecided
    split = _same({"bp": 0.40, "pfa-r10": 0.42}, rounds={"pfa-r10": [1.0, 1.05, 1.2]})
    t = get(_targets_data(split), "resnet_pfa_vs_bp")
    assert t["met"] is None and "undecided" in t["detail"]
    # contention while it ran (all-core regime) -> undecided, even with quiet records
    busy = _same({"bp": 0.40, "pfa-r10": 0.42}, foreign=0.6)
    t = get(_targets_data(busy), "resnet_pfa_vs_bp")
    assert t["met"] is None and "0.60 cores" in t["detail"]
    # a failed comparison, or one of another model / batch: the records again
    for bad in ({"kind": "samestep", "error": "worker exited"},
                _same({"bp": 0.4, "pfa-r10": 0.42}, batch=32)):
        t = get(_targets_data(bad), "resnet_pfa_vs_bp")
        assert t["value"] == pytest.approx(1.25) and "one process" not in t["detail"]


def test_bp_vs_torch_targets_read_same_process_comparisons():
    """BP / PyTorch's BP at every batch and on the MLP come from the comparison of that model
    and batch in one process (``samesteps``), with the per-process ratio quoted beside; a
    batch without one, or a failed one, reads the per-process records."""
    from minigrad_pfa.bench.targets import evaluate_targets

    def rec(model, impl, batch, t):
        return {"model": model, "rule": "bp", "impl": impl, "batch": batch, "device": "cpu",
                "step_s": t, "foreign_cores": 0.0, "gflops": 60.0, "peak_mb": 500.0}

    def cmp(model, batch, bp, torch, rounds=(1.0, 1.0, 1.0)):
        return {"kind": "samestep", "model": model, "batch": batch, "rounds": 3, "steps": 3,
                "foreign_cores": 0.0, "rules": {
                    "bp": {"step_s": bp, "round_s": [bp] * 3},
                    "torch:bp": {"step_s": torch, "round_s": [bp / q for q in rounds]}}}

    recs = [rec("resnet20", "minigrad", b, 0.5 * b / 128) for b in (32, 128, 256)] + \
        [rec("resnet20", "torch", b, 0.25 * b / 128) for b in (32, 128, 256)] + \
        [rec("mlp", "minigrad", 64, 0.004), rec("mlp", "torch", 64, 0.002)]
    data = {"machine": {"threads": 2, "device_kind": "cpu", "mode": "full"}, "records": recs,
            "gemm_peak_gflops": 200.0,
            "samesteps": [cmp("resnet20", 128, 0.5, 0.4),
                          cmp("resnet20", 256, 1.0, 0.5, rounds=(1.9, 2.1, 2.0)),
                          dict(cmp("resnet20", 32, 0.1, 0.1), error="worker exited"),
                          cmp("mlp", 64, 0.004, 0.005)]}
    got = {t["key"]: t for t in evaluate_targets(data)}
    t = got["resnet_bp_vs_torch"]
    assert t["value"] == pytest.approx(1.25) and t["met"] is True
    assert "separate processes: 2" in t["detail"] and "one process" in t["detail"]
    t = got["resnet_bp_vs_torch_b256"]  # 2.0 in one process, its rounds 1.9-2.1: not met
    assert t["value"] == pytest.approx(2.0) and t["met"] is False
    assert t["rounds"] == pytest.approx([1.9, 2.1, 2.0])
    t = got["resnet_bp_vs_torch_b32"]  # the comparison failed: the records (2x)
    assert t["value"] == pytest.approx(2.0) and "one process" not in t["detail"]
    t = got["mlp_bp_vs_torch"]
    assert t["value"] == pytest.approx(0.8) and t["met"] is True
    assert "4.00 ms / 5.00 ms (one process" in t["detail"]


def test_samestep_contention_is_its_busiest_rounds(monkeypatch):
    """Other processes' load is measured round by round, and the worst round counts (as for
    a step's record): a busy stretch in one round is not averaged away over the others."""
    from minigrad_pfa.bench import samestep, worker
    calls = []

    def busy():  # this process's CPU time, plus 1000 s of another process's in round 1 only
        calls.append(None)
        return time.process_time() + (1000.0 if len(calls) >= 3 else 0.0)

    monkeypatch.setattr(worker, "machine_busy_s", busy)
    monkeypatch.setattr(worker, "_busy_resolution_s", lambda: 0.0)
    out = samestep.run_samestep({"kind": "samestep", "rules": ["bp", "fa"], "model": "mlp-tiny",
                                 "batch": 8, "threads": 1, "rounds": 3, "steps": 1,
                                 "warmup": 0})
    quiet, loud, after = out["round_foreign_cores"]
    assert len(calls) == 4 and quiet < 0.25 and after < 0.25 and loud > 100
    assert out["foreign_cores"] == loud


def test_samestep_steps_pytorch_beside_the_engine(monkeypatch):
    """A ``torch:bp`` participant is PyTorch's autograd step of the same model and batch; a
    missing PyTorch is an error naming the install."""
    from minigrad_pfa.bench import samestep, worker
    assert samestep.label("torch:bp") == "bp (PyTorch autograd)" and samestep.label("bp") == "bp"
    if importlib.util.find_spec("torch") is not None:
        res = samestep.compare(["bp", "torch:bp"], model="mlp-tiny", batch=8, rounds=2,
                               steps=1, warmup=0)
        assert list(res) == ["bp", "torch:bp"] and res["torch:bp"]["step_s"] > 0

    def missing(cfg):
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(worker, "_setup_torch", missing)
    with pytest.raises(ImportError, match=r"needs PyTorch.*pip install torch==2.13.0"):
        samestep.compare(["bp", "torch:bp"], model="mlp-tiny", batch=8, rounds=1, steps=1)


def test_gemm_fraction_rounds_use_each_rounds_peak():
    """Round k's GEMM fraction divides by the peak measured in round k (right before the
    step); the pooled value by the peak given (the median of the rounds'); a run without
    per-round peaks divides every round by its one peak."""
    from minigrad_pfa.bench.targets import evaluate_targets, round_values
    rec = {"flops": 60e9, "round_step_s": [1.0, 0.5, 1.0]}
    assert round_values("resnet_bp_gemm_fraction", [rec], 200.0, [100.0, 200.0, 300.0]) == \
        pytest.approx([0.6, 0.6, 0.2])
    assert round_values("resnet_bp_gemm_fraction", [rec], 200.0) == \
        pytest.approx([0.3, 0.6, 0.3])
    # a round whose peak failed takes the run's
    assert round_values("resnet_bp_gemm_fraction", [rec], 200.0, [100.0, None, 300.0]) == \
        pytest.approx([0.6, 0.6, 0.2])
    data = _targets_data()
    data["records"][0].update(flops=60e9, round_step_s=[1.0, 0.5, 1.0], gflops=60e9 / 0.8e9)
    data.update(gemm_peak_gflops=200.0, gemm_round_gflops=[100.0, 200.0, 300.0])
    t = next(t for t in evaluate_targets(data) if t["key"] == "resnet_bp_gemm_fraction")
    assert t["value"] == pytest.approx(0.375) and t["rounds"] == pytest.approx([0.6, 0.6, 0.2])
    assert t["met"] is None and "median of the rounds' peaks" in t["detail"]
    # a same-process comparison that measured the peak before BP's steps decides instead
    # (60 GFLOP per step; BP 0.5 s in every round; peaks 100, 120, 150 -> 1.2, 1.0, 0.8)
    same = _same({"bp": 0.5, "pfa-r10": 0.5}, gemm_round_gflops=[100.0, 120.0, 150.0],
                 gemm_size=2048)
    data["samesteps"] = [same]
    t = next(t for t in evaluate_targets(data) if t["key"] == "resnet_bp_gemm_fraction")
    assert t["value"] == pytest.approx(1.0) and t["rounds"] == pytest.approx([1.2, 1.0, 0.8])
    assert t["met"] is True and "separate processes: 0.375" in t["detail"]
    data["samesteps"] = [dict(same, gemm_round_gflops=None)]  # no peaks in it: the records
    t = next(t for t in evaluate_targets(data) if t["key"] == "resnet_bp_gemm_fraction")
    assert t["value"] == pytest.approx(0.375)
    # peaks measured before another participant's steps are not BP's: the records
    data["samesteps"] = [_same({"pfa-r10": 0.5, "bp": 0.5}, gemm_round_gflops=[100.0] * 3)]
    t = next(t for t in evaluate_targets(data) if t["key"] == "resnet_bp_gemm_fraction")
    assert t["value"] == pytest.approx(0.375)


def test_samestep_gemm_peak_leaves_the_blas_limit():
    """The in-process GEMM peak raises NumPy's BLAS to the regime's threads for the
    measurement only."""
    from threadpoolctl import threadpool_info

    from minigrad_pfa.bench.samestep import gemm_peak
    from minigrad_pfa.cpu import using_threads

    def blas():
        return sorted(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")

    with using_threads(2):  # the engine's threads: BLAS held to one
        before = blas()
        assert gemm_peak(64, 2, settle_s=0.0)() > 0
        assert blas() == before


def test_round_peaks_precede_the_reference_step_in_round_order(monkeypatch, tmp_path):
    """The runner with a fake worker (2 regimes, 3 rounds, odd rounds reversed): a GEMM of the
    same regime runs right before every reference BP step; each regime's peaks are kept in
    round order and their median is its peak; a failed GEMM or comparison is reported
    (not raised) and the report names a failed start GEMM and all-failed rounds."""
    from minigrad_pfa.bench import runner
    calls, n_gemm = [], {}
    fail = {(1, 1)}  # the 1-thread regime's second numpy GEMM (round 1's): an error

    def fake(cfg, env, timeout_s):
        kind, t = cfg["kind"], cfg["threads"]
        calls.append((kind, t, cfg.get("rule"), cfg.get("group"), cfg.get("impl")))
        if kind == "gemm":
            if cfg["impl"] != "numpy":
                return {"error": "no torch here"}
            i = n_gemm[t] = n_gemm.get(t, -1) + 1
            if (t, i) in fail:
                return {"error": "gemm failed"}
            return {"gflops_max": 100.0 * t + 10 * i, "repeats": 3, "size": cfg["size"],
                    "blas": "fake", "blas_threads": 1, "blas_pools": None}
        if kind == "step":
            s_ = 0.1 * (1 + len(calls) % 3)
            return dict(cfg, step_times_s=[s_], step_s=s_, step_wall_s=s_, step_cpu_s=s_,
                        timer=cfg["timer"], foreign_cores=0.0, peak_mb=10.0, flops=1e9,
                        gflops=1.0 / s_, load1=0.0)
        return {"error": f"{kind} failed"}  # the same-process comparison fails

    monkeypatch.setattr(runner, "run_worker", fake)
    data = runner.run_bench(mode="tiny", threads=2, rounds=3, loader=False, host_syncs=False,
                            log=lambda *a: None, json_path=tmp_path / "b.json",
                            markdown_path=tmp_path / "b.md")
    ref = [i for i, c in enumerate(calls)
           if (c[0], c[2], c[3], c[4]) == ("step", "bp", "resnet", "minigrad")]
    assert len(ref) == 6  # 3 rounds x 2 regimes
    assert all(calls[i - 1][:2] == ("gemm", calls[i][1]) for i in ref)
    assert [calls[i][1] for i in ref] == [2, 1, 1, 2, 2, 1]  # odd rounds reversed
    peaks = {b["threads"]: b["gemm_round_gflops"] for b in data["regimes"]}
    # numpy GEMM i of a regime: the start is i = 0, rounds are i = 1, 2, 3
    assert peaks == {2: [210.0, 220.0, 230.0], 1: [None, 120.0, 130.0]}
    blk = {b["threads"]: b for b in data["regimes"]}
    assert blk[2]["gemm_peak_gflops"] == 220.0 and blk[1]["gemm_peak_gflops"] == 125.0
    assert blk[2]["samesteps"][0]["error"] == "samestep failed"
    assert blk[2]["samesteps"][0]["batch"] == 4  # which comparison failed
    text = (tmp_path / "b.md").read_text()
    assert "resnet20-tiny at batch 4: the same-process comparison failed: samestep failed" \
        in text
    # a run whose round GEMMs all failed names the start's peak, not a median
    for b in data["regimes"]:
        b["gemm_round_gflops"] = [None, None, None]
        b["gemm"]["numpy"] = {"error": "x"}
    from minigrad_pfa.bench.report_md import render
    text = render(data)
    assert "failed at the start; numpy's in each round" in text
    assert "(all failed: the start's peak is used)" in text and "256 x 256" in text


def test_allcore_keeps_the_least_disturbed_whole_run():
    """fastest_run: the run with the shortest step (its operations together, not each
    operation's minimum), failed runs skipped, an error only when every run failed."""
    from minigrad_pfa.bench.allcore import fastest_run
    a = {"step_s": 0.5, "operations": {"conv forward": {"s": 0.1}}}
    b = {"step_s": 0.4, "operations": {"conv forward": {"s": 0.2}}}
    got = fastest_run([a, {"error": "killed"}, b])
    assert got["operations"] == b["operations"] and got["rounds"] == 3
    assert fastest_run([{"error": "x"}, {"error": "y"}]) == {"error": "y"}


def test_cpu_timer_needs_one_thread():
    from minigrad_pfa.bench.runner import run_bench
    with pytest.raises(ValueError, match="timer 'cpu' needs --threads 1"):
        run_bench(mode="tiny", threads=2, timer="cpu", log=lambda *a: None)


# ------------------------------------------------------------ regimes and rounds


def test_a_failed_round_drops_out_of_the_round_check_and_fails_the_run():
    """A round whose worker failed is None in round_step_s: the target's rounds are the
    complete ones (a failed round must not switch the "every round on one side" check off
    and leave the pooled value alone to decide), and the pooled record carries the error,
    which fails the run's exit status and shows in the report."""
    from minigrad_pfa.bench.regimes import pool_rounds
    from minigrad_pfa.bench.report_md import _spread
    from minigrad_pfa.bench.runner import failed_records
    from minigrad_pfa.bench.targets import evaluate_targets, round_values

    def rnd(rule, t):  # one round's worker result, 5 steps of t seconds
        return _rec("resnet20", rule, "minigrad", 128, t, step_times_s=[t] * 5,
                    step_wall_s=t, step_cpu_s=t, flops=3e10, peak_mb=400.0,
                    foreign_cores=0.0)

    err = {"error": "timed out after 1800 s"}
    pfa = pool_rounds([rnd("pfa-r10", 0.5)] * 3)
    lit = pool_rounds([rnd("pfa-r10-literal", 3.0), rnd("pfa-r10-literal", 2.4), err])
    assert lit["round_step_s"] == [3.0, 2.4, None] and lit["rounds"] == 2
    assert lit["round_errors"] == [err["error"]] and "round_errors" not in pfa
    # rounds 0.5/3.0 = 0.167 and 0.5/2.4 = 0.208 straddle the 0.2 target: undecided, though
    # the pooled 0.5/2.7 = 0.185 alone would read met
    assert round_values("resnet_pfa_vs_literal", [pfa, lit]) == \
        pytest.approx([0.5 / 3.0, 0.5 / 2.4])
    assert round_values("resnet_pfa_vs_literal", [pfa, dict(lit, round_step_s=[3.0, None,
                                                                             None])]) is None
    data = {"machine": {"threads": 1, "device_kind": "cpu", "mode": "full"},
            "records": [pfa, lit], "samesteps": []}
    t = next(t for t in evaluate_targets(data) if t["key"] == "resnet_pfa_vs_literal")
    assert t["value"] == pytest.approx(0.5 / 2.7) and t["met"] is None
    # a GEMM peak stays with its own round when an earlier round failed
    bp = dict(pool_rounds([err, rnd("bp", 0.5), rnd("bp", 1.0)]), flops=60e9)
    assert round_values("resnet_bp_gemm_fraction", [bp], 200.0, [50.0, 100.0, 300.0]) == \
        pytest.approx([1.2, 0.2])
    run = {"regimes": [{"records": [pfa, lit]}], "profiles": [], "host_syncs": None}
    assert failed_records(run) == [lit]
    assert failed_records({**run, "regimes": [{"records": [pfa]}]}) == []
    assert _spread(lit).endswith("(10); 1 round(s) failed: timed out after 1800 s")


def test_a_printed_value_sits_on_its_side_of_the_target():
    """Values print to 3 digits unless rounding would carry them across the threshold."""
    from minigrad_pfa.bench.targets import format_targets, format_vs
    assert format_vs(0.9624, "<=", 1.3) == "0.962" and format_vs(1.0004, "<=", 1.0) == "1.0004"
    assert format_vs(0.39996, ">=", 0.4) == "0.39996" and format_vs(0.4, ">=", 0.4) == "0.4"
    assert format_vs(1500.3, "<=", 1500.0) == "1500.3" and format_vs(541.2, "<=", 1500) == "541"
    t = {"description": "MLP", "op": "<=", "target": 1.0, "value": 1.0004, "met": False,
         "detail": ""}
    assert format_targets([t]) == ["MLP: 1.0004 (target <= 1) [NOT met] "]


def test_pooled_rounds_median_iqr_and_regime_targets():
    from minigrad_pfa.bench.regimes import pool_rounds, quartiles, regime_threads, \
        regime_timer
    from minigrad_pfa.bench.report_md import render
    from minigrad_pfa.bench.targets import target_table, TARGETS, TARGETS_ALL_CORES

    assert regime_threads(4, "cpu") == [4, 1] and regime_threads(1, "cpu") == [1]
    assert regime_threads(4, "cuda") == [4] and regime_threads(4, "cpu", False) == [4]
    assert regime_timer("auto", 1, "cpu") == "cpu" and regime_timer("auto", 2, "cpu") == "wall"
    # hand-computed: pooled steps 1..9 -> median 5, inclusive quartiles 3 and 7
    rounds = [_rec("resnet20", "bp", "minigrad", 128, 0.0, step_times_s=[1.0, 2.0, 3.0],
                   step_wall_s=2.0, step_cpu_s=2.0, flops=9e9, peak_mb=10.0),
              _rec("resnet20", "bp", "minigrad", 128, 0.0, step_times_s=[4.0, 5.0, 6.0],
                   step_wall_s=5.0, step_cpu_s=5.0, flops=9e9, peak_mb=30.0),
              _rec("resnet20", "bp", "minigrad", 128, 0.0, step_times_s=[7.0, 8.0, 9.0],
                   step_wall_s=8.0, step_cpu_s=8.0, flops=9e9, peak_mb=20.0)]
    r = pool_rounds(rounds)
    assert r["step_s"] == 5.0 and (r["step_q1_s"], r["step_q3_s"]) == (3.0, 7.0)
    assert quartiles([2.0]) == (2.0, 2.0)
    assert r["peak_mb"] == 30.0 and r["gflops"] == pytest.approx(1.8) and r["rounds"] == 3
    assert target_table({"threads": 2, "device_kind": "cpu"}) is TARGETS_ALL_CORES
    assert target_table({"threads": 1, "device_kind": "cpu"}) is TARGETS
    # a two-regime JSON renders both tables, each with its own targets
    def full(impl, b, t):
        return _rec("resnet20", "bp", impl, b, t, step_times_s=[t], flops=1e9,
                    step_wall_s=t, step_cpu_s=t)

    recs2 = [full("minigrad", b, 1.0 * b / 128) for b in (32, 128, 256)] + \
        [full("torch", b, 0.5 * b / 128) for b in (32, 128, 256)]
    recs1 = [full("minigrad", 128, 1.5), full("torch", 128, 1.0)]
    machine = {"mode": "full", "device_kind": "cpu", "threads": 2, "timer": "wall",
               "thread_env": ["OMP_NUM_THREADS"], "torch_installed": False}
    blocks = [{"threads": t, "timer": tm, "gemm": {}, "gemm_peak_gflops": None,
               "records": rs} for t, tm, rs in ((2, "wall", recs2), (1, "cpu", recs1))]
    data = {"machine": machine, "records": recs2, "regimes": blocks, "profiles": [],
            "loader": None}
    text = render(data)
    assert "## All usable cores: 2 threads (issue 14's targets)" in text
    assert "## 1 thread (issue 6's targets)" in text
    assert "ResNet-20 BP step / PyTorch BP step, batch 256 | 2 | <= 1.3 | **no**" in text
    assert "ResNet-20 BP step / PyTorch BP step | 1.5 | <= 2 | yes" in text


def test_rounds_alternate_the_order_and_pool_by_configuration():
    """Round 2 runs the suite and the regimes in reverse (a configuration's place in a round
    must not bias its ratio to its neighbours); each record still pools its own steps."""
    from minigrad_pfa.bench.regimes import run_interleaved
    steps = [{"rule": r, "model": "m", "impl": "minigrad", "batch": 1, "device": "cpu",
              "group": "g"} for r in ("bp", "pfa", "fa")]
    steps[2]["once"] = True
    calls = []

    def run(cfg, t):
        calls.append((cfg["rule"], t))
        k = sum(1 for c in calls if c == (cfg["rule"], t))  # this configuration's round
        v = 10 * k + t
        return {"rule": cfg["rule"], "threads": t, "step_s": v, "step_times_s": [v],
                "step_wall_s": v, "step_cpu_s": v, "peak_mb": 1.0, "flops": 1.0}

    out = run_interleaved(steps, [2, 1], 3, run, lambda s: None, lambda r: "")
    first = [("bp", 2), ("bp", 1), ("pfa", 2), ("pfa", 1), ("fa", 2), ("fa", 1)]
    second = [("pfa", 1), ("pfa", 2), ("bp", 1), ("bp", 2)]  # reversed; "once" skipped
    assert calls == first + second + first[:4]
    for t in (2, 1):
        assert [r["rule"] for r in out[t]] == ["bp", "pfa", "fa"]
        assert [r["rounds"] for r in out[t]] == [3, 3, 1]
        assert out[t][0]["round_step_s"] == [10 + t, 20 + t, 30 + t]


def test_all_core_targets_undecided_on_contended_cores():
    """Wall-clock ratios measured while the load average exceeds 1.5x the cores decide
    nothing: met is None and the detail says why; a quiet run decides."""
    recs = [_rec("mlp", "bp", "minigrad", 64, 0.004, load1=2.5),
            _rec("mlp", "bp", "torch", 64, 0.005, load1=2.9)]
    machine = {"mode": "full", "device_kind": "cpu", "threads": 2, "cpus_usable": 2}
    t = {x["key"]: x for x in evaluate_targets({"machine": machine, "records": recs})}
    assert t["mlp_bp_vs_torch"]["met"] is True and t["mlp_bp_vs_torch"]["value"] == 0.8
    recs[1]["load1"] = 3.1
    t = {x["key"]: x for x in evaluate_targets({"machine": machine, "records": recs})}
    assert t["mlp_bp_vs_torch"]["met"] is None
    assert "undecided: load average up to 3.1 on 2 usable cores" in \
        t["mlp_bp_vs_torch"]["detail"]


def test_targets_undecided_when_the_rounds_disagree():
    """A ratio target is decided only when the pooled value and every interleaved round
    alone fall on the same side of the threshold; the rounds' range is always reported.
    The PFA spread (biased upwards round by round) keeps its pooled verdict."""
    machine = {"mode": "full", "device_kind": "cpu", "threads": 2, "cpus_usable": 2}
    recs = [_rec("resnet20", "bp", "minigrad", 128, 1.25, round_step_s=[1.2, 1.25, 1.28],
                 flops=5e10, gflops=40.0),
            _rec("resnet20", "bp", "torch", 128, 1.0, round_step_s=[1.0, 1.0, 1.0])]
    data = {"machine": machine, "records": recs, "gemm_peak_gflops": 100.0}
    t = {x["key"]: x for x in evaluate_targets(data)}
    bp = t["resnet_bp_vs_torch"]
    assert bp["met"] is True and bp["rounds"] == pytest.approx([1.2, 1.25, 1.28])
    assert "rounds 1.2 to 1.28" in bp["detail"] and "undecided" not in bp["detail"]
    frac = t["resnet_bp_gemm_fraction"]  # 5e10 flops / t_k / 100 GFLOP/s
    assert frac["rounds"] == pytest.approx([50 / 1.2 / 100, 0.4, 50 / 1.28 / 100])
    assert frac["met"] is None  # 0.417 >= 0.4 in round 1, 0.391 < 0.4 in round 3
    recs[0]["round_step_s"] = [1.2, 1.25, 1.4]  # one round over 1.3: the noise decides
    bp = {x["key"]: x for x in evaluate_targets(data)}["resnet_bp_vs_torch"]
    assert bp["met"] is None and "on both sides of the target: undecided" in bp["detail"]
    recs[0]["round_step_s"] = [1.35, 1.35, 1.35]  # every round over, pooled under
    assert {x["key"]: x for x in evaluate_targets(data)}["resnet_bp_vs_torch"]["met"] is None
    recs[0]["round_step_s"] = [1.2]  # a single round: the pooled value alone
    bp = {x["key"]: x for x in evaluate_targets(data)}["resnet_bp_vs_torch"]
    assert bp["met"] is True and bp["rounds"] is None
    spread = [_rec("resnet20", f"pfa-r{r}", "minigrad", 128, 1.0 + 0.01 * i,
                   round_step_s=[1.0, 1.5, 1.0][i:] + [1.0, 1.5, 1.0][:i])
              for i, r in enumerate((1, 10, 30))]
    t = {x["key"]: x for x in evaluate_targets({"machine": machine, "records": spread})}
    assert t["resnet_pfa_r_spread"]["met"] is True and t["resnet_pfa_r_spread"]["rounds"] is None


def test_foreign_cores_decide_contention():
    """Other processes' busy cores while timing (from /proc/stat) decide the all-core
    targets when recorded; a record over 0.25 cores makes them undecided."""
    from minigrad_pfa.bench.worker import machine_busy_s, timed_steps
    recs = [_rec("mlp", "bp", "minigrad", 64, 0.004, foreign_cores=0.1, load1=9.0),
            _rec("mlp", "bp", "torch", 64, 0.005, foreign_cores=0.2, load1=9.0)]
    machine = {"mode": "full", "device_kind": "cpu", "threads": 2, "cpus_usable": 2}
    t = {x["key"]: x for x in evaluate_targets({"machine": machine, "records": recs})}
    assert t["mlp_bp_vs_torch"]["met"] is True  # the load average is not consulted
    recs[0]["foreign_cores"] = 0.6
    t = {x["key"]: x for x in evaluate_targets({"machine": machine, "records": recs})}
    assert t["mlp_bp_vs_torch"]["met"] is None
    assert "other processes kept up to 0.60 cores busy" in t["mlp_bp_vs_torch"]["detail"]
    if machine_busy_s() is not None:  # Linux: a measured value, at least 0
        res = timed_steps(lambda: sum(range(10000)), lambda: None, 0, 3)
        assert res["foreign_cores"] >= 0.0
    # a target is judged on the records it reads: contention measured while another
    # configuration ran (here a PFA MLP step) leaves the BP ratio decided
    recs[0]["foreign_cores"] = 0.1
    recs.append(_rec("mlp", "pfa-o", "minigrad", 64, 0.006, foreign_cores=0.9))
    t = {x["key"]: x for x in evaluate_targets({"machine": machine, "records": recs})}
    assert t["mlp_bp_vs_torch"]["met"] is True


def test_foreign_cores_ignore_tick_rounding(monkeypatch):
    """/proc/stat moves in whole ticks per CPU: a busy difference within one tick per CPU
    of the worker's own CPU time is not another process (short MLP windows)."""
    from minigrad_pfa.bench import worker
    ticks = iter([100.0, 100.0 + 0.05 + worker._busy_resolution_s()])
    monkeypatch.setattr(worker, "machine_busy_s", lambda: next(ticks))
    res = worker.timed_steps(lambda: time.sleep(0.001), lambda: None, 0, 2)
    own = sum(res["cpu"])
    # all the extra busy time beyond own CPU, minus the resolution, over the wall time
    assert res["foreign_cores"] == pytest.approx(max(0.0, 0.05 - own) / sum(res["wall"]))


def test_allcore_breakdown_times_operations_and_regions():
    """The all-core breakdown (bench.allcore): every operation of a ResNet step timed, the
    pool's regions found inside them when the step shards, the wrappers removed after."""
    from minigrad_pfa import cpu
    from minigrad_pfa.bench import allcore
    from minigrad_pfa.bench.report_md import _allcore_section
    from minigrad_pfa.functional import conv as F_conv
    before = F_conv.conv2d_forward
    cfg = {"model": "resnet20-tiny", "rule": "bp", "impl": "minigrad", "batch": 8,
           "device": "cpu", "steps": 2, "warmup": 1}
    serial = allcore.run_ops(dict(cfg, threads=1))
    with cpu.using_threads(2, min_rows=1, min_elements=1):
        sharded = allcore.run_ops(dict(cfg, threads=2))
    assert F_conv.conv2d_forward is before  # uninstalled
    for res in (serial, sharded):
        ops = res["operations"]
        # every BN of a ResNet with option-A shortcuts has a ReLU after it: layer pairs
        for name in ("conv forward", "conv input error", "conv weight gradient",
                     "BN + ReLU forward", "ReLU + BN backward", "BatchNorm backward",
                     "ReLU backward", "optimizer"):
            assert ops[name]["s"] > 0, name
        assert sum(v["s"] for k, v in ops.items() if k != "other") < res["step_s"]
    assert all(v["parallel_s"] == 0 for v in serial["operations"].values())
    conv = sharded["operations"]["conv forward"]
    assert 0 < conv["parallel_s"] <= conv["s"] and 0 < conv["busy"] <= 1.0 + 1e-9
    scaling = allcore.run_scaling({"threads": 2, "seconds": 0.05, "rounds": 1})
    for k in ("gemm_in_cache", "copy_32mb"):
        assert scaling[k]["speedup_median"] > 0
    text = "\n".join(_allcore_section({"ops": {"1": serial, "2": sharded},
                                       "scaling": scaling}))
    assert "| conv forward |" in text and "in-cache GEMM" in text and "**step**" in text


def test_torch_step_by_operation_and_the_allcore_command(capsys):
    """bench.allcore's PyTorch side: operators mapped to the engine's operations (the first
    matching fragment wins), a profiled PyTorch step split by them, and the command's
    table with both implementations."""
    pytest.importorskip("torch")
    from minigrad_pfa.bench import allcore
    assert allcore.torch_operation("aten::convolution_backward") == \
        "conv input error + weight gradient"
    assert allcore.torch_operation("aten::mkldnn_convolution") == "conv forward"
    assert allcore.torch_operation("aten::native_batch_norm_backward") == "BatchNorm backward"
    assert allcore.torch_operation("aten::addmm") == "linear"
    assert allcore.torch_operation("aten::mm") == "linear input error + weight gradient"
    assert allcore.torch_operation("aten::add_") == "other"
    res = allcore.run_torch_ops({"model": "resnet20-tiny", "rule": "bp", "impl": "torch",
                                 "batch": 4, "device": "cpu", "steps": 1, "warmup": 1,
                                 "threads": 1})
    ops = res["operations"]
    for name in ("conv forward", "conv input error + weight gradient", "BatchNorm forward",
                 "BatchNorm backward", "ReLU forward", "ReLU backward", "other"):
        assert ops[name]["s"] > 0, name
    assert sum(v["s"] for v in ops.values()) <= res["step_s"] * 1.05
    assert allcore.main(["--model", "mlp", "--batch", "4", "--threads", "1", "--rounds", "1",
                         "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "torch 1T" in out and "linear input error + weight gradient" in out


def test_dispatch_cost_and_op_scaling_report(capsys, monkeypatch):
    """``python -m minigrad_pfa.bench.dispatch``: the pool's hand-off time and the ReLU / BN
    timings on 1 and 2 threads (one small shape here) that calibrate MIN_ELEMENTS."""
    from minigrad_pfa.bench import dispatch
    r = dispatch.dispatch_cost(2, calls=50)
    assert r["threads"] == 2 and 0 < r["q1_s"] <= r["median_s"] <= r["q3_s"]
    from minigrad_pfa.cpu import threads as cpu_threads
    engine_executor = cpu_threads.ThreadPoolExecutor
    for spinning in (False, True):  # a smoke test of the reports, on both pools
        rc = dispatch.region_cost(2, calls=5, work_s=2e-5, spinning=spinning)
        assert rc["spinning"] is spinning
        for name in ("hot", "cold"):
            # a region runs both shards: at least the work of one of them
            assert rc[name]["region_s"] >= 0.5 * rc["shard_s"]
            assert 0 <= rc[name]["helper_share"] <= 1  # a quick helper may take both
    assert cpu_threads.ThreadPoolExecutor is engine_executor  # the prototype is undone
    rn = dispatch.numba_region_cost(2, calls=5, work_s=2e-5)  # Numba's threads, if any
    if rn is not None:
        assert rn["threads"] == 2
        assert all(rn[name]["region_s"] >= 0.5 * rn["shard_s"] for name in ("hot", "cold"))
    tp = dispatch.threads_vs_processes(2, seconds=0.05)
    assert tp["alone_s"] > 0 and tp["threads_s"] > 0 and tp["processes_s"] > 0
    monkeypatch.setattr(dispatch, "SHAPES", [(4, 8, 4)])
    rows = dispatch.op_scaling(2, rounds=1, calls=2)
    assert rows[0]["elements"] == 4 * 8 * 4 * 4
    assert all(rows[0][k] > 0 for k in ("relu_1", "relu_2", "bn_1", "bn_2"))
    assert dispatch.main(["2"]) == 0 and "speed-up" in capsys.readouterr().out


def test_profile_phases_count_the_compiled_kernels_where_they_belong():
    """Every function of the compiled convolutions is GEMM time and of the compiled batch
    norm BatchNorm time, not "Python overhead" (their own time is all of their work: the
    GEMMs they call through a C pointer are invisible to cProfile)."""
    import inspect

    from minigrad_pfa.bench.phases import phase_of
    from minigrad_pfa.jit import batchnorm as jit_bn
    for module, phase in ((jit_bn, "BatchNorm"), ("conv", "GEMM")):
        if module == "conv":
            pytest.importorskip("numba", reason="jit.conv needs the optional extra [jit]")
            from minigrad_pfa.jit import conv as module
        path = "minigrad_pfa/" + module.__name__.split(".", 1)[1].replace(".", "/") + ".py"
        names = [n for n, f in vars(module).items()
                 if inspect.isfunction(f) and f.__module__ == module.__name__]
        assert names and {phase_of(n, f"{path}:1") for n in names} == {phase}, module
    assert phase_of("forward", "minigrad_pfa/nn/resnet.py:94") == "elementwise"


def test_samestep_interleaves_rules_in_one_process(capsys, monkeypatch):
    """``python -m minigrad_pfa.bench.samestep``: every rule stepped in every round, the
    order reversed in odd rounds, ratios to the first rule; fewer than two rules is an error."""
    from minigrad_pfa import train
    from minigrad_pfa.bench import samestep
    order = []
    real = train.train_step

    def spy(net, *a, **kw):
        order.append(id(net))
        return real(net, *a, **kw)

    monkeypatch.setattr(train, "train_step", spy)
    res = samestep.compare(["bp", "pfa-r1", "fa"], model="mlp", batch=8, rounds=2, steps=1,
                           warmup=0)
    assert list(res) == ["bp", "pfa-r1", "fa"]
    assert len(order) == 6 and order[3:] == order[:3][::-1]  # round 2 reversed
    assert res["bp"]["ratio"] == 1.0 and all(len(v["round_ratios"]) == 2 for v in res.values())
    for v in res.values():
        assert v["step_s"] > 0 and abs(v["ratio"] - v["step_s"] / res["bp"]["step_s"]) < 1e-12
    assert samestep.spread({"pfa-r1": {"step_s": 2.0}, "pfa-r10": {"step_s": 2.5},
                            "bp": {"step_s": 9.0}}) == 0.25
    assert samestep.spread(res) is None  # one PFA rule
    with pytest.raises(ValueError, match="at least two"):
        samestep.compare(["bp"])
    assert samestep.main(["--rules", "bp,pfa-r1,pfa-r10", "--model", "mlp", "--batch", "8",
                          "--rounds", "2", "--steps", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "pfa-r10" in out and "PFA spread over the r given" in out
