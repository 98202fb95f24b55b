"""Data-parallel training over MPI (NCCL between GPUs) and sweeps on Ray.

Notation
--------
N ranks (processes, one model replica each; rank 0 writes the run directory); n the global
batch (the config's ``data.batch_size``), each rank a disjoint contiguous shard of n/N
examples of every global batch (N must divide n, and the last batch of an epoch); theta
every learned array the optimizer updates: W, b, BatchNorm's gamma/beta and the learned
feedback (KP's B, PFA's R); L the loss, a mean over the global batch::

    L(theta)   = 1/n * sum_{i<n} l_i = 1/N * sum_r L_r,     L_r = 1/(n/N) * sum_{i in shard r} l_i
    g          = dL/dtheta = 1/N * sum_r g_r                g_r = dL_r/dtheta, rank r's backward
    each step:   buf = [g_r (flattened, every parameter), L_r, correct_r]   one flat buffer
                 buf <- allreduce_sum(buf) / N                              ONE all-reduce
                 theta <- optimizer(theta, g)                               same on every rank

Why it is the same computation as one process: the rules are linear in the output error
``e = dL/dlogits`` sample by sample (every rule's ``gW = delta.T @ x`` is a sum over samples;
KP's ``gB = gW``, PFA's ``gR = B.T @ gW`` are linear in ``gW``; DFA's ``e @ D_l`` is per
sample, so DFA's error shards with its samples), so averaging the per-rank gradients of the
per-rank means gives the global mean's gradient, up to the order of the float additions.
All ranks start from the same host-drawn weights and feedback (same seed; checked by an
all-gather of a state digest at start), apply the same averaged update, and stay equal.

What couples samples, and how it is kept equal:

* BatchNorm (``distributed.sync_bn: true``): the per-channel sums and the count, then the
  sums of squared deviations about the global mean, are added over the ranks (two
  all-reduces of (c+1,) and (c,) vectors per layer in the forward pass), and in the backward
  pass ``dbeta``, ``dgamma`` (one (2c,) all-reduce), so each rank normalises with the global
  batch's statistics: N ranks = one process. Default (false): each rank normalises its own
  shard (PyTorch DDP's default), the running statistics of rank 0 are copied to every rank
  at the end of every epoch (DDP's ``broadcast_buffers``).
* WM's mirror phase (not a gradient: no all-reduce): every rank draws the same noise from
  the layer's counter-based stream and computes the same update of ``B`` from the same
  ``W``, so ``B`` stays equal on every rank without communication. The mirror batch
  defaults to the layer's last batch, here the shard n/N: the estimate of ``W`` is then
  sqrt(N) times noisier than one process's. Set the rule option ``mirror_batch: n`` and
  the N-rank run draws exactly one process's noise (same stream, same size): the same
  computation, the mirror done redundantly on every rank.
* Augmentation: for in-memory datasets every rank augments the whole global batch with one
  process's stream and keeps its rows (the same crops and flips as one process); image
  folders draw per (seed, epoch, batch, rank, N) (identically distributed, not the same).

Not synchronised: the host random streams of the data order (a function of the seed and the
epoch, the same on every rank), the metrics (every rank computes them on its identical
model; rank 0 writes them) and the evaluation (each rank evaluates a slice of every
evaluation batch; the totals are added).

Modules: :mod:`.comm` (communicators with a collective deadline), :mod:`.nccl` (CuPy arrays
through NCCL), :mod:`.context` (the group BatchNorm / WM see), :mod:`.parallel` (the step,
sharded loaders, state checks), :mod:`.launch` (``train --distributed``),
:mod:`.ray_grid` (``grid --backend ray``), :mod:`.bench` (the scaling benchmark).
"""
