"""``minigrad-pfa doctor``: the CPU part here; the ``--device cuda`` checks on the stand-in."""
import json

import pytest

from minigrad_pfa.backend import cuda_available
from minigrad_pfa.cli import main
from minigrad_pfa.cli_doctor import run_doctor


def test_cpu_part_reports_the_machine(tmp_path, capsys):
    assert main(["doctor", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "BLAS" in out and "PyTorch" in out and "datasets:" in out
    assert "CPU kernels: numpy; Numba" in out
    rep = json.loads((tmp_path / "d.json").read_text())
    assert set(rep["machine"]) >= {"numpy", "cuda", "torch", "kernels", "datasets"}
    assert "synthetic-mlp" in rep["machine"]["datasets"]


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so_in_one_line_and_exits_0(capsys):
    assert main(["doctor", "--device", "cuda"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("no GPU here")]
    assert len(lines) == 1 and "the CPU part passed" in lines[0]


def test_gpu_checks_pass_on_the_standin(standin, tmp_path):
    logged = []
    status = run_doctor("cuda", tmp_path / "d.json", log=logged.append,
                        rules=("pfa", "brsf"), image=8, steps_image=8)
    assert status == 0, "\n".join(logged)
    rep = json.loads((tmp_path / "d.json").read_text())
    kinds = {(c["check"], c["rule"]) for c in rep["gpu"]["checks"]}
    for rule in ("pfa", "brsf"):
        assert {("parity float64", rule), ("parity float32", rule), ("10 steps float64", rule),
                ("10 steps float32", rule), ("host syncs", rule)} <= kinds
    assert any("STAND-IN" in line for line in logged)
    assert any("bench: skipped on the CuPy stand-in" in line for line in logged)
    assert rep["gpu"]["memory_pool_mb"] == 0  # the stand-in allocates with NumPy


def test_a_failing_check_makes_the_exit_status_non_zero(standin, monkeypatch):
    from minigrad_pfa.doctor import gpu

    def broken(rule, dtype, **kw):  # e.g. a kernel giving wrong numbers on the device
        return {"check": f"parity {dtype}", "rule": rule, "ok": False, "detail": "broken"}
    monkeypatch.setattr(gpu, "parity", broken)
    monkeypatch.setattr(gpu, "train_steps", lambda *a, **k: 1 / 0)  # a check that raises
    logged = []
    assert run_doctor("cuda", log=logged.append, rules=("bp",), image=8, steps_image=8) == 1
    assert any("[FAIL] parity float64 bp: broken" in ln for ln in logged)
    assert any("[FAIL] 10 steps float32 bp: ZeroDivisionError" in ln for ln in logged)


def test_thread_verdict_needs_every_round_beyond_the_margin():
    from minigrad_pfa.doctor.threads import MARGIN, verdict
    assert verdict([1.6, 1.5, 1.7]) == "faster"
    assert verdict([0.5, 0.6, 0.9]) == "slower"
    assert verdict([1.6, 0.9, 1.7]) == "no difference"  # the rounds disagree
    assert verdict([1 + MARGIN / 2] * 3) == "no difference"  # within the margin
    assert verdict([1 - 2 * MARGIN] * 3) == "slower"
    assert verdict([]) == "no difference"


def test_check_threads_times_both_counts_and_restores_the_setting(tmp_path):
    from minigrad_pfa import cpu
    from minigrad_pfa.cpu import threads as cpu_threads
    logged = []
    before, unlimited = cpu.get_threads(), cpu_threads._state["blas_limiter"] is None
    status = run_doctor("cpu", tmp_path / "d.json", log=logged.append, check_threads=True,
                        thread_probes={"resnet20-tiny": (4, 1), "mlp-tiny": (8, 2)})
    assert status == 0
    assert cpu.get_threads() == before
    assert (cpu_threads._state["blas_limiter"] is None) == unlimited  # BLAS's limits too
    rep = json.loads((tmp_path / "d.json").read_text())["threads"]
    n = cpu_threads.default_threads()
    if n == 1:
        assert rep["models"] == [] and any("nothing to compare" in ln for ln in logged)
        return
    assert [m["model"] for m in rep["models"]] == ["resnet20-tiny", "mlp-tiny"]
    for m in rep["models"]:
        assert m["threads"] == n and len(m["round_speedups"]) == 3
        assert m["t1_s"] > 0 and m["tn_s"] > 0
        assert m["verdict"] in ("faster", "slower", "no difference")
    assert sum(ln.startswith("threads: ") for ln in logged) == 2


def test_check_threads_names_the_fix_when_the_cores_lose(monkeypatch):
    from minigrad_pfa.doctor import threads as doc_threads
    fake = {"model": "mlp", "batch": 64, "threads": 2, "t1_s": 0.004, "tn_s": 0.008,
            "speedup": 0.5, "round_speedups": [0.5, 0.5, 0.6], "verdict": "slower"}
    monkeypatch.setattr(doc_threads, "probe_model", lambda *a, **k: fake)
    logged = []
    doc_threads.check_threads(threads=2, probes={"mlp": (64, 40)}, log=logged.append)
    assert len(logged) == 1 and "0.50x" in logged[0] and "slower" in logged[0]
    assert "--threads 1" in logged[0] and "MINIGRAD_PFA_THREADS=1" in logged[0]
