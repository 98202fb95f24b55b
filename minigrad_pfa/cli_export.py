"""``minigrad-pfa export CHECKPOINT --out model.pt [--format biotorch]``: a checkpoint as a
PyTorch state dict (plain, or a peer's names with feedback); ``minigrad-pfa import PEER.pt
--like CHECKPOINT --out NEW.npz``: a peer's state dict into an engine checkpoint."""
from __future__ import annotations

#: --format values: "torch" = plain PyTorch names, no feedback (minigrad_pfa.export)
FORMATS = ("torch", "biotorch", "biotorch-fork")


def add_parser(sub):
    p = sub.add_parser(
        "export", help="export a checkpoint to a PyTorch state dict (needs torch)",
        description="Write the forward model of a checkpoint (latest.npz, best.npz, or a run "
                    "directory: the checkpoint its results.json used) as an OrderedDict of "
                    "torch tensors with PyTorch's names, for "
                    "model.load_state_dict(torch.load(PATH, weights_only=True), strict=True). "
                    "Feedback state of the learning rules is left out, unless --format names "
                    "a peer (BioTorch, the PFA authors' BioTorch fork): then the feedback is "
                    "written under the peer's names (weight_backward, weight_backward_B/_R).")
    p.add_argument("checkpoint", help="checkpoint .npz or run directory")
    p.add_argument("--out", required=True, help="output file, e.g. model.pt")
    p.add_argument("--format", choices=FORMATS, default="torch",
                   help="torch (default): plain PyTorch; biotorch / biotorch-fork: a peer "
                        "state dict with feedback (docs/crosscheck.md, 'Peer checkpoints')")
    p.add_argument("--prefix", default="",
                   help="prepended to every name with --format biotorch*, e.g. 'module.' "
                        "for a biotorch BioModule")
    p.add_argument("--include-feedback", action="store_true",
                   help="with --format torch: also export feedback_* arrays (they do not "
                        "load into a plain PyTorch model)")
    p.set_defaults(func=_cmd_export)

    q = sub.add_parser(
        "import", help="import a BioTorch / BioTorch-fork state dict (needs torch)",
        description="Load a peer's .pt state dict (torch.load weights_only=True), feedback "
                    "included, into the model and rules of an engine checkpoint, write the "
                    "result as an engine checkpoint and print each layer's weight alignment. "
                    "Missing, extra or misshaped keys are one error listing them.")
    q.add_argument("peer", help="peer state dict (.pt)")
    q.add_argument("--like", required=True,
                   help="engine checkpoint or run directory whose model and rules match")
    q.add_argument("--out", required=True, help="engine checkpoint to write (.npz)")
    q.add_argument("--format", choices=FORMATS[1:], default="biotorch")
    q.add_argument("--prefix", default=None,
                   help="name prefix in the peer file (default: detect 'module.' or none)")
    q.set_defaults(func=_cmd_import)


def _cmd_export(args):
    if args.format != "torch":
        from .peer_checkpoints import export_checkpoint_to_peer
        if args.include_feedback:
            raise ValueError("--include-feedback applies to --format "
                             "torch only (peer formats always include the feedback)")
        info = export_checkpoint_to_peer(args.checkpoint, args.out, args.format, args.prefix)
        print(f"wrote {info['out']}: {info['format']} state dict of {info['tensors']} "
              f"tensors from {info['checkpoint']}")
        return 0
    if args.prefix:
        raise ValueError("--prefix applies to --format biotorch / biotorch-fork only")
    from .export import export_checkpoint

    info = export_checkpoint(args.checkpoint, args.out, include_feedback=args.include_feedback)
    what = f"{info['model']} " if info["model"] else ""
    epoch = "" if info["epoch_done"] is None else f" after epoch {info['epoch_done'] + 1}"
    print(f"wrote {info['out']}: {what}state dict of {info['tensors']} tensors, "
          f"{info['parameters']} values ({', '.join(info['dtypes'])}) from "
          f"{info['checkpoint']}{epoch}")
    return 0


def _cmd_import(args):
    from .peer_checkpoints import import_peer_checkpoint

    info = import_peer_checkpoint(args.peer, args.like, args.out, args.format, args.prefix)
    print(f"wrote {info['out']}: {info['arrays']} arrays of {args.peer} "
          f"({args.format}, prefix {info['prefix']!r})")
    for name, a in info["alignment"].items():
        angle = "-" if a["angle"] is None else f"{a['angle']:.1f} deg"
        ratio = "-" if a["norm_ratio"] is None else f"{a['norm_ratio']:.3f}"
        note = "  (first layer: feedback unused)" if a["first_layer_feedback_unused"] else ""
        print(f"  {name:12s} {a['rule']:5s} angle {angle:>10s}  norm ratio {ratio}{note}")
    return 0
