"""``minigrad-pfa doctor``: what this machine can run, and proof that the GPU path works.

    machine.py   the CPU part: NumPy / BLAS and threads, CuPy / CUDA / GPU, PyTorch,
                 cached datasets (never fails for a missing optional piece)
    gpu.py       ``--device cuda``: NumPy <-> device parity of a ResNet-20 forward and
                 backward for every rule, 10 training steps per rule, host syncs per step,
                 a short bench against PyTorch on the GPU and the GPU targets
                 (:mod:`minigrad_pfa.bench.gpu_targets`)
    threads.py   ``--check-threads``: a training step on one thread and on the default
                 ``--threads``, interleaved, and whether the cores pay on this machine

On the CuPy stand-in (tests, ``MINIGRAD_PFA_CUPY_STANDIN=1``) the GPU checks run on the
CPU stand-in and the bench is skipped (its timings would mean nothing).
"""
