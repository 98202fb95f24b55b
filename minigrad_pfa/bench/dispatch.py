"""The CPU pool's own cost: one empty ``map_shards`` hand-off and collection.

``python -m minigrad_pfa.bench.dispatch [THREADS]`` prints the median and quartiles of
:func:`minigrad_pfa.cpu.threads.dispatch_cost` (default: all usable cores), the figure
behind the pool's smallest-shard rule (``MIN_ELEMENTS``).
"""
from __future__ import annotations

import sys

from ..cpu.threads import dispatch_cost


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    r = dispatch_cost(int(args[0]) if args else None)
    print(f"empty map_shards on {r['threads']} threads, {r['calls']} calls: median "
          f"{r['median_s'] * 1e6:.1f} us (quartiles {r['q1_s'] * 1e6:.1f}-"
          f"{r['q3_s'] * 1e6:.1f} us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
