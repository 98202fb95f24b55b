"""Write torchvision's ResNet-18/34 state-dict names and shapes, one "name shape" per line.

The committed lists (``torchvision_resnet18_state_dict.txt``,
``torchvision_resnet34_state_dict.txt``) are the reference that
``tests/test_models_torch.py`` checks the engine's ``state_dict()`` against. They were
produced with the real torchvision (torchvision does not import beside the torch 2.13.0 of
the test environment, so a separate virtual environment is used)::

    python3 -m venv /tmp/tvenv
    /tmp/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/tvenv/bin/python tests/data/make_torchvision_list.py tests/data

A shape is written as comma-separated integers in parentheses, ``()`` for 0-d arrays
(``num_batches_tracked``). The tests never import torchvision or run this script.
"""
import os
import sys


def dump(model, path):
    with open(path, "w") as fh:
        for name, t in model.state_dict().items():
            fh.write(f"{name} ({','.join(str(s) for s in t.shape)})\n")


def main(out_dir="."):
    import torch
    import torchvision

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    for depth in (18, 34):
        model = getattr(torchvision.models, f"resnet{depth}")()  # default: 1000 classes
        path = os.path.join(out_dir, f"torchvision_resnet{depth}_state_dict.txt")
        dump(model, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
