"""Every command-line input error is one line naming the input, exit status 2, no traceback.

The test walks the parser (``minigrad-pfa --help`` and every nested sub-command, so a
command added later is walked too) and gives each command inputs a user gets wrong:

* an option that does not exist (argparse's own errors are one line too);
* for each positional argument: a path that does not exist, a directory, a binary file
  (a file name where a directory is needed, for outputs), or for a dataset name an unknown
  name;
* for each input option (``--resume``, ``--init-from``, ``--data-dir``, ``--cases``,
  ``--adapter``): a missing path, a binary file, a directory that is not what it names;
* for each command with ``--set``, on a valid config: ``KEY`` without ``=VALUE``, an unknown
  key, an unparsable value, a value out of range.

Each must end with exit status 2 and exactly one line on stderr, without a traceback, that
contains the input (the path, option or key) -- a message without it cannot say what to
fix. Nothing here trains, downloads or exports: every probe must fail before work starts.
"""
import argparse
import os

import pytest
import yaml

from minigrad_pfa.cli import build_parser, main

#: positional arguments that name things which must exist / be written (by dest)
OUTPUT_POSITIONALS = {"dir"}
NAME_POSITIONALS = {"name"}
#: options whose value is an input that must exist
INPUT_OPTIONS = ("--resume", "--init-from", "--data-dir", "--cases", "--adapter")
#: options that are required; the value given while another argument is probed
FILLERS = {"--out": "OUTFILE", "--adapter": "ADAPTER"}
#: probes whose input is valid for that command: ``data verify --data-dir EMPTY_FOLDER``
#: reports the missing files as a failed verification (exit 1), which is its purpose;
#: ``data path --data-dir FOLDER`` prints the folder it was given
VALID = {("data verify", "--data-dir", "DIR"), ("data path", "--data-dir", "DIR")}


def leaves(parser=None, prefix=()):
    """(command words, parser) of every runnable (sub-)command."""
    parser = parser or build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield list(prefix), parser
        return
    for name, sp in subs[0].choices.items():
        yield from leaves(sp, (*prefix, name))


LEAVES = list(leaves())
IDS = [" ".join(w) for w, _ in LEAVES]


@pytest.fixture
def inputs(tmp_path):
    binary = tmp_path / "binary.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    config = tmp_path / "ok.yaml"
    config.write_text(yaml.safe_dump({
        "name": "ok", "model": {"name": "mlp", "hidden": [4]},
        "data": {"name": "synthetic-mlp", "flatten": True, "normalize": "train_stats"}}))
    return {"MISSING": str(tmp_path / "no_such_file.yaml"), "DIR": str(folder),
            "BINARY": str(binary), "CONFIG": str(config),
            "OUTFILE": str(tmp_path / "out" / "x.pt"),
            "ADAPTER": "minigrad_pfa.crosscheck.adapters.engine:adapter"}


def run(argv, capsys):
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:          # argparse
        rc = exc.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return rc, err


def assert_one_line_error(argv, rc, err, needle):
    shown = " ".join(argv)
    assert rc == 2, f"{shown}: exit {rc}, stderr {err}"
    assert len(err) == 1, f"{shown}: {len(err)} stderr lines: {err}"
    assert "Traceback" not in err[0] and needle in err[0], f"{shown}: {err[0]!r}"


def positionals(parser):
    return [a for a in parser._actions if not a.option_strings
            and not isinstance(a, argparse._SubParsersAction)]


def required_fill(parser, inputs, skip=()):
    argv = []
    for a in parser._actions:
        if a.required and a.option_strings and a.option_strings[0] not in skip:
            argv += [a.option_strings[0], inputs[FILLERS.get(a.option_strings[0], "MISSING")]]
    return argv


def test_the_walk_finds_every_command():
    names = {w[0] for w, _ in LEAVES}
    assert {"train", "rules", "data", "report", "bench", "grid", "export"} <= names
    assert ["data", "get"] in [w for w, _ in LEAVES]


@pytest.mark.parametrize("words, parser", LEAVES, ids=IDS)
def test_unknown_option_is_one_line(words, parser, inputs, capsys):
    argv = [*words, "--no-such-option"]
    for a in positionals(parser):
        if a.nargs in (None, "+"):
            argv.insert(len(words), "x")
    argv += required_fill(parser, inputs)
    rc, err = run(argv, capsys)
    assert_one_line_error(argv, rc, err, "--no-such-option")


def _positional_probes(parser):
    for a in positionals(parser):
        if a.dest in NAME_POSITIONALS:
            yield a, ["no-such-dataset"]
        elif a.dest in OUTPUT_POSITIONALS:
            yield a, ["BINARY"]
        else:
            yield a, ["MISSING", "DIR", "BINARY"]


POSITIONAL_CASES = [(w, p, a.dest, kind) for w, p in LEAVES
                    for a, kinds in _positional_probes(p) for kind in kinds]


@pytest.mark.parametrize("words, parser, dest, kind", POSITIONAL_CASES,
                         ids=[f"{' '.join(w)}-{d}-{k}" for w, _, d, k in POSITIONAL_CASES])
def test_bad_positional_is_one_line_naming_it(words, parser, dest, kind, inputs, capsys):
    value = inputs.get(kind, kind)
    argv = [*words]
    for a in positionals(parser):
        if a.dest == dest:
            argv.append(value)
        elif a.nargs in (None, "+"):
            argv.append(inputs["MISSING"])
    argv += required_fill(parser, inputs)
    rc, err = run(argv, capsys)
    assert_one_line_error(argv, rc, err, value)


OPTION_CASES = [(w, p, opt, kind) for w, p in LEAVES
                for opt in INPUT_OPTIONS
                if opt in p._option_string_actions
                for kind in ("MISSING", "BINARY", "DIR")]


@pytest.mark.parametrize("words, parser, opt, kind", OPTION_CASES,
                         ids=[f"{' '.join(w)}{o}-{k}" for w, _, o, k in OPTION_CASES])
def test_bad_input_option_is_one_line_naming_it(words, parser, opt, kind, inputs, capsys):
    if (" ".join(words), opt, kind) in VALID:
        pytest.skip("a valid input for this command (see VALID)")
    value = inputs[kind]
    argv = [*words]
    for a in positionals(parser):
        if a.dest in NAME_POSITIONALS:
            argv.append("mnist")
        elif a.dest == "config" and opt != "--resume":
            argv.append(inputs["CONFIG"])
        elif a.nargs in (None, "+"):
            argv.append(inputs["MISSING"])
    argv += [opt, value] + required_fill(parser, inputs, skip=(opt,))
    if words == ["train"]:
        argv += ["--run-dir", os.path.join(inputs["DIR"], "..", "run_of_probe")]
    rc, err = run(argv, capsys)
    assert_one_line_error(argv, rc, err, value)


SET_CASES = [(w, p, bad, key) for w, p in LEAVES if "--set" in p._option_string_actions
             for bad, key in (("optim.lr", "optim.lr"), ("optim.learning_rate=0.1",
                                                          "optim.learning_rate"),
                              ("model.hidden=[1, 2", "model.hidden"),
                              ("optim.lr=-1", "optim.lr"), ("model.hidden=[0]", "model.hidden"))]


@pytest.mark.parametrize("words, parser, bad, key", SET_CASES,
                         ids=[f"{' '.join(w)}-{b}" for w, _, b, _ in SET_CASES])
def test_bad_set_is_one_line_naming_the_key(words, parser, bad, key, inputs, capsys, tmp_path):
    argv = [*words, inputs["CONFIG"], "--set", bad, "--out", str(tmp_path / "runs")]
    rc, err = run(argv, capsys)
    assert_one_line_error(argv, rc, err, key)
    assert not (tmp_path / "runs").exists()
