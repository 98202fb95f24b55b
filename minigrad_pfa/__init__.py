"""minigrad_pfa: an explicit NumPy/CuPy engine for learning rules without weight transport.

Backprop (BP), feedback alignment (FA), direct feedback alignment (DFA), sign-concordant
feedback (uSF/brSF/frSF), Kolen-Pollack (KP), weight mirror (WM) and product feedback
alignment (PFA, Li & Benna 2024, arXiv:2405.20594), with every forward and backward
equation written out.
"""
__version__ = "0.1.0"
