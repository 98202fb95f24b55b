"""Adapters shipped with the crosscheck (see docs/crosscheck.md)."""
