"""Effective defaults: one mechanism (``rules.registry.effective_options``) answers what a
rule runs with when an option is left out; ``minigrad-pfa rules`` prints it and the
report's rule labels hide exactly the options that do not change it (issue 10: the
listing printed ``expand_ratio=None`` for PFA, whose effective default is 10, and the
report special-cased PFA's ratio on its own)."""
import pytest

from minigrad_pfa.cli import main
from minigrad_pfa.report import rule_label
from minigrad_pfa.rules import RULES
from minigrad_pfa.rules.options import option_notes
from minigrad_pfa.rules.registry import effective_options, rule_options


def test_pfa_effective_ratio_depends_on_the_variant():
    assert effective_options("pfa")["expand_ratio"] == 10
    assert effective_options("pfa", {"orthogonal": True})["expand_ratio"] == 1
    assert effective_options("pfa", {"identity": True})["expand_ratio"] == 1
    assert effective_options("pfa", {"expand_ratio": 4})["expand_ratio"] == 4


def test_wm_effective_defaults_follow_its_variant():
    assert effective_options("wm")["mirror_lr"] == 0.05
    assert effective_options("wm", {"variant": "akrout"})["mirror_lr"] == 0.01


@pytest.mark.parametrize("name", list(RULES))
def test_every_option_has_an_effective_value(name):
    eff = effective_options(name)
    assert set(eff) == set(rule_options(name))
    # a None left is a real setting (no normalisation, the training batch, the other
    # variant's knob), never PFA's "10 unless ..." placeholder
    for k, v in eff.items():
        if v is None:
            assert k in ("norm", "mirror_batch", "noise_amplitude"), (name, k)


def test_rules_listing_prints_effective_defaults(capsys):
    assert main(["rules"]) == 0
    text = capsys.readouterr().out
    pfa = next(line for line in text.splitlines() if "expand_ratio" in line)
    assert "expand_ratio=10" in pfa and "expand_ratio=None" not in pfa
    for name, cls in RULES.items():
        eff = effective_options(name)
        for k, note in option_notes(cls).items():    # words about the default agree with it
            if eff[k] is not None:
                assert note.startswith(repr(eff[k])), (name, k, note)


@pytest.mark.parametrize("spec, label", [
    ({"name": "pfa", "expand_ratio": 10}, "PFA"),
    ({"name": "pfa"}, "PFA"),
    ({"name": "pfa", "expand_ratio": 5}, "PFA(expand_ratio=5)"),
    ({"name": "pfa", "orthogonal": True}, "PFA-o"),
    ({"name": "pfa", "orthogonal": True, "expand_ratio": 1}, "PFA-o"),   # r = 1 is implied
    ({"name": "pfa", "identity": True, "expand_ratio": 1}, "PFA(identity=True)"),
    ({"name": "fa", "feedback_density": 1.0}, "FA"),
    ({"name": "wm", "variant": "akrout", "mirror_lr": 0.01}, "WM(variant=akrout)"),
    ({"name": "wm", "mirror_lr": 0.01}, "WM(mirror_lr=0.01)"),
])
def test_report_labels_hide_what_does_not_change_the_rule(spec, label):
    assert rule_label({"rule": spec}) == label
