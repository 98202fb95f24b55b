"""docs/crosscheck.md's worked example runs as written and does what the text says."""
import os
import re

from minigrad_pfa.crosscheck import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "<!-- worked-example -->"


def worked_example() -> str:
    with open(os.path.join(ROOT, "docs", "crosscheck.md"), encoding="utf-8") as fh:
        text = fh.read()
    assert text.count(MARKER) == 1
    m = re.match(r"\s*```python\n(.*?)\n```", text.split(MARKER, 1)[1], re.S)
    assert m, f"the {MARKER} marker must be followed by a ```python fenced block"
    return m.group(1)


def test_worked_example_passes_linear_and_skips_conv(capsys):
    scope = {}
    exec(compile(worked_example(), "docs/crosscheck.md:worked-example", "exec"), scope)
    report = run(scope["adapter"], rules=["fa", "bp"])
    out = capsys.readouterr().out
    layer = [r for r in report.results if r.kind == "layer"]
    linear = [r for r in layer if "/linear" in r.id]
    assert linear and all(r.status == "pass" for r in linear)
    assert all(r.status == "skip" and r.summary == "Linear layers only"
               for r in layer if "/conv" in r.id)
    assert report.exit_code == 0 and "skip  layer/fa/conv" in out
    # the text's claim: had FA used W, its Linear cases fail on the input error
    code = worked_example().replace('B = W if case.rule == "bp" else case["B"]', "B = W")
    assert code != worked_example()
    exec(compile(code, "wrong", "exec"), scope)
    wrong = run(scope["adapter"], rules=["fa"], quiet=True)
    assert wrong.exit_code == 1
    assert all(r.summary.startswith("forward ok, input error differs")
               for r in wrong.results if r.status != "skip")
