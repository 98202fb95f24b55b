"""Benchmarks (``minigrad-pfa bench``; ``python -m minigrad_pfa.bench.<name>``).

runner      the ``bench`` command: runs the suite, writes the JSON and the Markdown report
suite       rule labels, model shapes and the configuration lists (full / quick / tiny)
worker      one configuration in a fresh process (step, GEMM peak, loader, profile)
flops       analytic GEMM FLOP count of a training step per layer and rule
targets     the issue's performance targets evaluated on one run
report_md   docs/performance.md from the JSON
torch_models  PyTorch twins: autograd BP and the published PFA formulation
proto       prototype engine speed-ups measured by ``--proposals``
spinpool    prototype pool whose helpers spin (proto's ``spin-pool``; dispatch's regions)
loader      data-loader throughput
"""
