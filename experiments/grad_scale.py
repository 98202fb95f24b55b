"""Typical |gW| of a config's rule at initialisation (sets the Batch Manhattan learning rate).

Batch Manhattan (Liao et al. 2016) steps every weight by ``lr * sign(gW)``, so its learning
rate must be about the SGD step of the protocol per entry, ``lr_sgd * mean|gW|``. This
prints mean and median |gW| per weight layer and over all weights for the first batches
of ``CONFIG`` (seed 0, no update):

    python experiments/grad_scale.py experiments/f1/sf.yaml [--batches 3]
"""
from __future__ import annotations

import argparse

import numpy as np

from minigrad_pfa.config import load_config
from minigrad_pfa.experiment_data import build_data
from minigrad_pfa.functional.loss import softmax_cross_entropy
from minigrad_pfa.nn.models import weight_layers
from minigrad_pfa.nn.module import BackwardContext
from minigrad_pfa.train import model_from_config


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--batches", type=int, default=3)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    cfg["seed"] = 0
    data = build_data(cfg, progress=False)
    model, _ = model_from_config(cfg, data.sample_shape)
    batches = iter(data.train)
    for b in range(args.batches):
        x, y = next(batches)
        _, e = softmax_cross_entropy(model.forward(x), y)
        model.backward(e, BackwardContext(output_error=e))
        grads = {n: np.abs(layer.weight.grad).ravel() for n, layer in weight_layers(model).items()}
        if b == 0:
            for n, g in grads.items():
                print(f"{n:20s} mean|gW| {g.mean():.2e}")
        every = np.concatenate(list(grads.values()))
        print(f"batch {b}: all weights mean|gW| {every.mean():.2e} median {np.median(every):.2e}")
        model.clear_cache()


if __name__ == "__main__":
    main()
