"""What a run's or a benchmark's numbers were measured on: the CPU model.

``platform.processor()`` says only ``x86_64`` on Linux, which cannot tell two machines of
one architecture apart (this project's runs moved from an AMD EPYC to an Intel Xeon host
between two sessions, and wall times differ by 1.5-2x between them). The model name comes
from ``/proc/cpuinfo`` where there is one.
"""
from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s first ``model name``), else what
    :mod:`platform` knows (``processor()`` or ``machine()``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
