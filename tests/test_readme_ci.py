"""The README's test command is what CI runs, word for word, and it works from a clean clone.

The README marks its test command with ``<!-- test-command -->`` before a fenced ``bash``
block; ``.ci/run`` holds the same command verbatim, extracts README's block, refuses to
run if they differ, and runs it (``bash .ci/run --print-test-command``
prints what it would run). A bare ``pytest`` (not ``python -m pytest``) does not put the
project root on ``sys.path``; the tests import ``tests._util``, so ``setup.cfg`` must set
``pythonpath = .`` -- checked here by collecting in a subprocess started from a folder
outside the project with a bare ``pytest`` whose rootdir is a copy of the project files
that matter.
"""
import configparser
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "<!-- test-command -->"


def readme_test_command() -> str:
    """The command in the fenced block right after the marker (parsed here independently
    of .ci/run's shell extraction)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    assert text.count(MARKER) == 1, f"README.md must hold exactly one {MARKER}"
    after = text.split(MARKER, 1)[1]
    m = re.match(r"\s*```bash\n(.*?)\n```", after, re.S)
    assert m, f"the {MARKER} marker must be followed by a ```bash fenced block"
    return m.group(1).strip()


def test_readme_test_command_is_the_documented_one():
    assert readme_test_command().split() == [
        "pip", "install", "-e", "'.[test]'", "&&", "pip", "install", "--no-deps",
        "biotorch==0.0.16", "&&", "pytest"]


def test_ci_runs_the_readme_command_word_for_word():
    out = subprocess.run(["bash", os.path.join(ROOT, ".ci", "run"), "--print-test-command"],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == readme_test_command().split()


def test_ci_script_holds_the_readme_command_verbatim_and_refuses_a_drifted_readme(tmp_path):
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as fh:
        assert readme_test_command() in fh.read()
    # a copy of the project whose README says something else: .ci/run stops before running
    (tmp_path / ".ci").mkdir()
    shutil.copy(os.path.join(ROOT, ".ci", "run"), tmp_path / ".ci" / "run")
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    (tmp_path / "README.md").write_text(text.replace("&& pytest", "&& pytest -x"))
    out = subprocess.run(["bash", str(tmp_path / ".ci" / "run"), "--print-test-command"],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert out.returncode == 1 and "differs" in out.stderr


def test_setup_cfg_puts_the_project_root_on_pytest_path():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert cfg.get("tool:pytest", "pythonpath", fallback="").split() == ["."]


def test_bare_pytest_collects_tests_that_import_tests_util(tmp_path):
    """A bare ``pytest`` from the project root (the README's words) collects a test module
    that imports ``tests._util``: run on a copy holding setup.cfg, tests/_util.py and one
    such module, with the interpreter's own pytest entry point and PYTHONPATH cleared."""
    proj = tmp_path / "proj"
    (proj / "tests").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "setup.cfg"), proj / "setup.cfg")
    shutil.copy(os.path.join(ROOT, "tests", "_util.py"), proj / "tests" / "_util.py")
    (proj / "tests" / "test_probe.py").write_text(
        "from tests._util import rel_err\n\ndef test_probe():\n    assert rel_err(1.0, 1.0) == 0\n")
    pytest_exe = shutil.which("pytest")
    if pytest_exe is None:
        pytest.skip("no 'pytest' executable on PATH (the README's command needs one)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([pytest_exe, "-q", "-p", "no:cacheprovider"], cwd=proj, env=env,
                         capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
