"""Strict config validation, ``--set`` parsing, and every committed experiment config.

Each invalid config must raise :class:`ConfigError` whose message names the offending key
(an unknown key, a wrong type, a value out of range, a bad choice, a missing required key);
the command line turns it into one line on stderr and exit status 2. The committed
``experiments/*/*.yaml`` must validate and be exactly what ``make_configs.py`` writes.
"""
import copy
import glob
import importlib.util
import os

import pytest
import yaml

from minigrad_pfa.cli import main
from minigrad_pfa.config import (ConfigError, apply_overrides, load_config, parse_override,
                                 resolve_config)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
MINIMAL = {"model": {"name": "mlp"}, "data": {"name": "synthetic-mlp"}}


def with_(update: dict) -> dict:
    """MINIMAL with ``update`` merged in one level deep."""
    cfg = copy.deepcopy(MINIMAL)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


def test_minimal_config_gets_documented_defaults():
    cfg = resolve_config(copy.deepcopy(MINIMAL))
    assert cfg["rule"] == "bp"                   # no rule: backprop
    assert cfg["seed"] == 0 and cfg["epochs"] == 1 and cfg["dtype"] == "float32"
    assert cfg["optim"] == {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": False,
                            "weight_decay": 0.0, "betas": None,
                            "allow_adaptive_optimizer": False}
    assert cfg["data"]["batch_size"] == 64 and cfg["data"]["val_size"] == 0
    assert cfg["eval"]["select_on"] == "auto"
    # the input is not modified
    assert MINIMAL == {"model": {"name": "mlp"}, "data": {"name": "synthetic-mlp"}}


def test_int_is_accepted_where_a_float_is_expected():
    cfg = resolve_config(with_({"optim": {"lr": 1, "weight_decay": 0}}))
    assert cfg["optim"]["lr"] == 1.0 and isinstance(cfg["optim"]["lr"], float)
    assert isinstance(cfg["optim"]["weight_decay"], float)


@pytest.mark.parametrize("update, key, words", [
    # unknown keys, at the top level and in a section (typos must not be ignored)
    ({"epoch": 3}, "'epoch'", ["unknown", "valid keys"]),
    ({"data": {"batchsize": 32}}, "'data.batchsize'", ["unknown", "batch_size"]),
    ({"optim": {"learning_rate": 0.1}}, "'optim.learning_rate'", ["unknown"]),
    # wrong types
    ({"epochs": "ten"}, "'epochs'", ["expected int", "str"]),
    ({"epochs": 2.5}, "'epochs'", ["expected int", "float"]),
    ({"epochs": True}, "'epochs'", ["boolean"]),
    ({"optim": {"lr": "fast"}}, "'optim.lr'", ["expected float"]),
    ({"data": {"flatten": "yes"}}, "'data.flatten'", ["expected bool"]),
    ({"model": {"hidden": 64}}, "'model.hidden'", ["expected list"]),
    ({"model": {"hidden": [64, "wide"]}}, "'model.hidden'", ["list of integers"]),
    ({"seeds": [0, 1.5]}, "'seeds'", ["list of integers"]),
    ({"rule": 5}, "'rule'", ["expected dict or str or null", "int"]),
    ({"published": "98%"}, "'published'", ["expected dict or null"]),
    ({"data": 5}, "'data'", ["must be a mapping"]),
    # out of range
    ({"epochs": 0}, "'epochs'", ["must be > 0"]),
    ({"optim": {"lr": -0.1}}, "'optim.lr'", ["must be > 0"]),
    ({"optim": {"weight_decay": -1e-4}}, "'optim.weight_decay'", ["must be >= 0"]),
    ({"data": {"val_size": -5}}, "'data.val_size'", ["must be >= 0"]),
    ({"seed": -1}, "'seed'", ["must be >= 0"]),
    # bad choices
    ({"dtype": "float16"}, "'dtype'", ["not one of", "float32"]),
    ({"optim": {"name": "rmsprop"}}, "'optim.name'", ["not one of", "adamw"]),
    ({"data": {"augment": "mixup"}}, "'data.augment'", ["not one of", "crop_flip"]),
    ({"eval": {"select_on": "test"}}, "'eval.select_on'", ["not one of"]),
    # model shapes (issue 10: [0] trained a useless network, [-5] failed inside NumPy)
    ({"model": {"hidden": [0]}}, "'model.hidden'", ["positive"]),
    ({"model": {"hidden": [64, -5]}}, "'model.hidden'", ["positive"]),
    ({"model": {"num_classes": 1}}, "'model.num_classes'", [">= 2"]),
    ({"model": {"in_channels": 0}}, "'model.in_channels'", [">= 1"]),
    ({"model": {"in_features": -3}}, "'model.in_features'", [">= 1"]),
    ({"model": {"image_size": 0}}, "'model.image_size'", [">= 1"]),
    ({"model": {"in_channels": 2.0}}, "'model.in_channels'", ["expected int"]),
])
def test_invalid_values_raise_an_error_naming_the_key(update, key, words):
    with pytest.raises(ConfigError) as info:
        resolve_config(with_(update))
    msg = str(info.value)
    assert key in msg, msg
    for w in words:
        assert w in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("cfg, key", [
    ({"data": {"name": "mnist"}}, "'model.name'"),
    ({"model": {"name": "mlp"}}, "'data.name'"),
    ({"model": {"hidden": [8]}, "data": {"name": "mnist"}}, "'model.name'"),
])
def test_missing_required_key_is_named(cfg, key):
    with pytest.raises(ConfigError, match="is required") as info:
        resolve_config(cfg)
    assert key in str(info.value)


@pytest.mark.parametrize("text, path, value", [
    ("optim.lr=0.1", ["optim", "lr"], 0.1),
    ("optim.weight_decay=1e-4", ["optim", "weight_decay"], 1e-4),   # YAML 1.1 would say str
    ("optim.lr=5E-3", ["optim", "lr"], 5e-3),
    # YAML 1.2 floats that YAML 1.1 reads as strings (its exponent needs a sign)
    ("optim.lr=1.0e6", ["optim", "lr"], 1.0e6),
    ("optim.lr=1.5e-3", ["optim", "lr"], 1.5e-3),
    ("optim.lr=+2.E3", ["optim", "lr"], 2e3),
    ("optim.lr=.5e1", ["optim", "lr"], 5.0),
    ("optim.lr=-3.0E2", ["optim", "lr"], -300.0),
    ("name=1.0.0", ["name"], "1.0.0"),              # not a number in either version
    ("name=1e", ["name"], "1e"),
    ("epochs=3", ["epochs"], 3),
    ("data.flatten=true", ["data", "flatten"], True),
    ("model.hidden=[8, 16]", ["model", "hidden"], [8, 16]),
    ("rule={name: pfa, expand_ratio: 5}", ["rule"], {"name": "pfa", "expand_ratio": 5}),
    ("name=a=b", ["name"], "a=b"),                  # only the first '=' separates
    ("data.data_dir=null", ["data", "data_dir"], None),
    ("name=", ["name"], ""),
])
def test_parse_override(text, path, value):
    got_path, got = parse_override(text)
    assert got_path == path
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ["optim.lr", "=0.1", " =1", "model.hidden=[1, 2"])
def test_bad_override_is_a_config_error(text):
    with pytest.raises(ConfigError, match="--set"):
        parse_override(text)


def test_overrides_apply_before_validation():
    cfg = apply_overrides({"rule": "fa", "model": {"name": "mlp"}},
                          ["rule.name=pfa", "rule.expand_ratio=4", "optim.lr=0.2",
                           "data.name=synthetic-mlp"])
    assert cfg["rule"] == {"name": "pfa", "expand_ratio": 4}      # string rule -> dict
    assert cfg["optim"] == {"lr": 0.2} and cfg["data"] == {"name": "synthetic-mlp"}
    # an override of an unknown key is caught by the validation, which names it
    with pytest.raises(ConfigError, match="'optim.lrr'"):
        resolve_config(apply_overrides(cfg, ["optim.lrr=0.1"]))
    with pytest.raises(ConfigError, match="'optim.lr'.*must be > 0"):
        resolve_config(apply_overrides(cfg, ["optim.lr=0"]))


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: mlp\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(str(bad))
    ok = tmp_path / "ok.yaml"
    ok.write_text("model: {name: mlp}\ndata: {name: synthetic-mlp}\noptim: {lr: 1e-3}\n")
    cfg = load_config(str(ok), ["optim.weight_decay=5e-4"])
    assert cfg["optim"]["lr"] == 1e-3 and cfg["optim"]["weight_decay"] == 5e-4


@pytest.mark.parametrize("content, overrides, key", [
    ("model: {name: mlp}\ndata: {name: synthetic-mlp}\nepohcs: 3\n", [], "'epohcs'"),
    ("model: {name: mlp}\ndata: {name: synthetic-mlp}\n", ["optim.lr=-1"], "'optim.lr'"),
    ("model: {name: mlp}\ndata: {name: synthetic-mlp}\n", ["dtype=half"], "'dtype'"),
    ("data: {name: synthetic-mlp}\n", [], "'model.name'"),
    ("model: {name: mlp}\ndata: {name: synthetic-mlp}\n", ["optim.lr"], "KEY=VALUE"),
])
def test_cli_reports_config_errors_in_one_line_with_exit_2(tmp_path, capsys, content,
                                                           overrides, key):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    argv = ["train", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    for o in overrides:
        argv += ["--set", o]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("minigrad-pfa train: error:") and key in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "results.json").exists()


def test_cli_missing_config_file_exit_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err


# ---------------------------------------------------------------- committed experiment configs
CONFIGS = sorted(glob.glob(os.path.join(EXPERIMENTS, "*", "*.yaml")))


def test_every_protocol_has_configs():
    dirs = {os.path.basename(os.path.dirname(p)) for p in CONFIGS}
    assert {"e1", "e2", "e3", "e4", "f1"} <= dirs
    assert len([p for p in CONFIGS if "/e4/" in p]) == 24   # 4 rules x 6 densities


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, EXPERIMENTS))
def test_committed_config_validates(path):
    from minigrad_pfa.rules import parse_rule
    from minigrad_pfa.rules.registry import make_rule
    from minigrad_pfa.train import schedules_from_config

    cfg = load_config(path)
    # the parts validated later (rule options, schedules) must be valid too
    spec = dict(cfg["rule"]) if isinstance(cfg["rule"], dict) else parse_rule(cfg["rule"])
    make_rule(spec.pop("name"), **spec)
    lr, wd = schedules_from_config(cfg)
    assert lr.value(0, 0, 10) == pytest.approx(cfg["optim"]["lr"])
    assert wd.value(0, 0, 10) == pytest.approx(cfg["optim"]["weight_decay"])
    if cfg["published"] is not None:
        assert set(cfg["published"]) == {"mean", "std", "metric"}
    if cfg["protocol"] in ("E1", "E2", "E3", "E4", "F1"):
        assert cfg["seeds"], path
        # the config's name is its run directory: <exp>/<rule>.yaml -> <exp>_<rule>
        exp, rule = os.path.basename(os.path.dirname(path)), os.path.basename(path)[:-5]
        assert cfg["name"] == f"{exp}_{rule}"


def test_committed_configs_match_make_configs(monkeypatch):
    """The YAML files are exactly what experiments/make_configs.py generates."""
    spec = importlib.util.spec_from_file_location(
        "make_configs", os.path.join(EXPERIMENTS, "make_configs.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    written = {}
    monkeypatch.setattr(mod, "_write", lambda rel, cfg: written.setdefault(rel, cfg) and rel)
    mod.write_all()
    assert written
    for rel, cfg in written.items():
        path = os.path.join(EXPERIMENTS, rel)
        assert os.path.exists(path), f"{rel} is not committed; run make_configs.py"
        with open(path) as fh:
            on_disk = yaml.safe_load(fh)
        assert on_disk == cfg, f"{rel} is out of date; run python experiments/make_configs.py"
