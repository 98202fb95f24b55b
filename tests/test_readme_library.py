"""The README's "Use it as a library" block runs as written and does what it says."""
import contextlib
import io
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "<!-- library-example -->"


def library_example() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    assert text.count(MARKER) == 1, f"README.md must hold exactly one {MARKER}"
    m = re.match(r"\s*```python\n(.*?)\n```", text.split(MARKER, 1)[1], re.S)
    assert m, f"the {MARKER} marker must be followed by a ```python fenced block"
    return m.group(1)


def test_readme_library_example_runs():
    scope = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(library_example(), "README.md:library-example", "exec"), scope)
    lines = out.getvalue().splitlines()
    # one line per weight layer: fc1 and fc, each an angle in degrees and a norm ratio
    assert [ln.split(":")[0] for ln in lines] == ["fc1", "fc"]
    for ln in lines:  # a fresh PFA's path B @ R is random: about 90 degrees from W
        angle = float(re.search(r": ([\d.]+) deg", ln).group(1))
        ratio = float(re.search(r"norm ratio ([\d.]+)", ln).group(1))
        assert 60.0 < angle < 120.0 and ratio > 0.0
    # the step changed W and PFA's R (the optimizer ran on both)
    fc = scope["model"].fc
    assert fc.feedback_R.grad is not None and fc.weight.grad is not None
