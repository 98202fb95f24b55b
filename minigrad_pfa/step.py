"""One training step and one evaluation pass: the loop body every rule shares.

One training step (every rule, every model)::

    for each weight layer: rule.before_step(layer)          (e.g. brSF redraws M_t)
    logits = model.forward(x)
    loss, e = softmax_cross_entropy(logits, y)              (e = dL/dlogits)
    model.backward(e, BackwardContext(output_error=e))      (rules supply the input errors;
                                                             cpu.overlap on several threads)
    [data-parallel runs: average the gradients over the ranks]
    optimizer.step()                                        (W, b, BN, and learned feedback)
    for each weight layer: rule.after_step(layer)           (masks, mirror phase, constraints)

Loss and correct count come back as device scalars: the caller decides when to read them
(a host read is a device synchronisation on a GPU).
"""
from __future__ import annotations

from .backend import get_array_module
from .cpu.overlap import overlapping
from .functional.loss import accuracy_counts, softmax_cross_entropy
from .nn.module import BackwardContext


def train_step(model, layers, optimizer, x, y, parallel=None):
    """One step of the active rules on a batch; returns (loss, n_correct) as device scalars.

    ``parallel`` (a :class:`~minigrad_pfa.distributed.parallel.DataParallel`, data-parallel
    runs only): ``x, y`` are this rank's shard; the gradients are averaged over the ranks
    before the optimizer step and the returned loss / count are the global batch's.
    """
    for layer in layers:
        layer.rule.before_step(layer)
    logits = model.forward(x)
    loss, e = softmax_cross_entropy(logits, y)
    correct = accuracy_counts(logits, y)
    # parameter gradients may run beside the backward pass (NumPy, T > 1); all are done
    # when the block ends (cpu.overlap)
    with overlapping(get_array_module(e)):
        model.backward(e, BackwardContext(output_error=e))
    if parallel is not None:
        loss, correct = parallel.average_gradients(optimizer, loss, correct)
    optimizer.step()
    for layer in layers:
        layer.rule.after_step(layer)
    model.clear_cache()
    return loss, correct


def evaluate(model, loader):
    """Mean loss and accuracy (%) of ``model`` in eval mode over ``loader``."""
    was_training = model.training
    model.eval()
    total_loss, total_correct, total = 0.0, 0, 0
    try:
        for x, y in loader:
            logits = model.forward(x)
            loss, _ = softmax_cross_entropy(logits, y)
            n = int(y.shape[0])
            # host accumulation in float64: a deliberate float64 place (metric accumulator)
            total_loss += float(loss) * n
            total_correct += int(accuracy_counts(logits, y))
            total += n
    finally:
        model.clear_cache()
        model.train(was_training)
    # a data-parallel loader yields this rank's part of each batch: add the other ranks'
    combine = getattr(loader, "combine_totals", None)
    if combine is not None:
        total_loss, total_correct, total = combine(total_loss, total_correct, total)
    if total == 0:
        raise RuntimeError("evaluation loader yielded no examples")
    return total_loss / total, 100.0 * total_correct / total
