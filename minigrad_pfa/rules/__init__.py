"""Learning rules: each rule supplies a weight layer's input-error operator and its
feedback learning; nothing else in the engine depends on which rule runs.

=====  ==========================================  ====================
name   rule                                         module
=====  ==========================================  ====================
bp     backpropagation, M = W                       :mod:`.base`
fa     feedback alignment, M = B fixed              :mod:`.fa`
dfa    direct feedback alignment, e @ D_l           :mod:`.dfa`
usf    uniform sign-concordant, s * sign(W)         :mod:`.sign`
brsf   batchwise random-magnitude sign-concordant   :mod:`.sign`
frsf   fixed random-magnitude sign-concordant       :mod:`.sign`
kp     Kolen-Pollack, B learned with gB = gW        :mod:`.kp`
wm     weight mirror, B learned by a mirror phase   :mod:`.wm`
pfa    product feedback alignment, M = B @ R        :mod:`.pfa`
=====  ==========================================  ====================

Entry points: :func:`make_rule`, :func:`attach_rules` (per-layer maps, frozen layers,
shallow baseline), :func:`check_optimizer`. The equations of each rule are in its
module's docstring; ``docs/rules.md`` maps every equation to its function.
"""
from .base import BP, Rule
from .dfa import DFA
from .fa import FA
from .guard import OPT_IN, check_optimizer
from .kp import KP
from .pfa import PFA, pfa_flops
from .registry import (RULES, attach_rules, detach_rules, make_rule, parse_rule,
                       rule_options)
from .sign import BRSF, FRSF, USF, SignConcordant
from .wm import WM

__all__ = ["Rule", "BP", "FA", "DFA", "USF", "BRSF", "FRSF", "SignConcordant", "KP", "WM",
           "PFA", "pfa_flops", "RULES", "make_rule", "attach_rules", "detach_rules",
           "parse_rule", "rule_options", "check_optimizer", "OPT_IN"]
