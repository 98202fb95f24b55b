"""``minigrad-pfa export CHECKPOINT --out model.pt``: a checkpoint as a PyTorch state dict."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "export", help="export a checkpoint to a PyTorch state dict (needs torch)",
        description="Write the forward model of a checkpoint (latest.npz, best.npz, or a run "
                    "directory: the checkpoint its results.json used) as an OrderedDict of "
                    "torch tensors with PyTorch's names, for "
                    "model.load_state_dict(torch.load(PATH, weights_only=True), strict=True). "
                    "Feedback state of the learning rules is left out.")
    p.add_argument("checkpoint", help="checkpoint .npz or run directory")
    p.add_argument("--out", required=True, help="output file, e.g. model.pt")
    p.add_argument("--include-feedback", action="store_true",
                   help="also export feedback_* arrays (they do not load into a plain "
                        "PyTorch model)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args):
    from .export import export_checkpoint

    info = export_checkpoint(args.checkpoint, args.out, include_feedback=args.include_feedback)
    what = f"{info['model']} " if info["model"] else ""
    epoch = "" if info["epoch_done"] is None else f" after epoch {info['epoch_done'] + 1}"
    print(f"wrote {info['out']}: {what}state dict of {info['tensors']} tensors, "
          f"{info['parameters']} values ({', '.join(info['dtypes'])}) from "
          f"{info['checkpoint']}{epoch}")
    return 0
