"""Training runs: a resumable run directory around the step of :mod:`minigrad_pfa.step`.

The step itself (rules' before/after hooks, forward, loss, backward, optimizer) lives in
:mod:`minigrad_pfa.step`; the model, optimizer and schedules are built from the config by
:mod:`minigrad_pfa.build` (both re-exported here).

Run directory (``--out DIR/NAME``; one run per directory, :mod:`minigrad_pfa.rundir`)::

    run.json           the run's identity: run id, start, --init-from source
    config.yaml        the resolved config
    metrics.jsonl      one JSON line per epoch (and per N steps when asked)
    latest.npz         checkpoint after the last finished epoch (atomic write)
    best.npz           checkpoint of the best validation accuracy (runs with a validation split)
    results.json       final test evaluation (best-validation checkpoint, or the final epoch
                       where the protocol has no validation split)
    run.lock           flock'ed while a process trains here (one writer per directory)

Every checkpoint, metrics line and results.json carries the run id of run.json; a fresh
start into a directory holding a run is refused unless ``overwrite`` (``--overwrite``), and
a resume refuses files of another run.

Killed at any moment, a run continues with ``--resume`` from the last finished epoch: the
end of an epoch writes best.npz (if improved), then its metrics line, then latest.npz, so
latest.npz never runs ahead of metrics.jsonl or best.npz (the resumed run re-does the
unfinished epoch and truncates metrics.jsonl to match).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import yaml

from .backend import check_device, device_description, get_array_module, to_numpy
from . import rundir
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, resolve_config
from .metrics import MechanismTracker, collect_metrics
from .nn.models import weight_layers
# re-exported: the step and the builders are part of this module's public API
from .build import model_from_config, optimizer_from_config, schedules_from_config  # noqa: F401
from .step import evaluate, train_step  # noqa: F401


class DivergenceError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass
class RunPaths:
    root: str

    def __post_init__(self):
        os.makedirs(self.root, exist_ok=True)

    def __getattr__(self, name):
        files = {"config": "config.yaml", "metrics": "metrics.jsonl", "latest": "latest.npz",
                 "metrics_steps": "metrics_steps.jsonl",
                 "best": "best.npz", "results": "results.json"}
        if name in files:
            return os.path.join(self.root, files[name])
        raise AttributeError(name)


class Trainer:
    """A resumable training run of one config (one seed).

    Parameters
    ----------
    cfg : dict
        A resolved config (:func:`minigrad_pfa.config.resolve_config`).
    out_dir : str
        The run directory.
    data : object
        Provides ``train``, ``val`` (or None), ``test`` loaders, ``probe`` (x, y) and a
        ``description`` string (:func:`minigrad_pfa.experiment_data.build_data`).
    progress : bool
        Show a tqdm progress bar per epoch.
    overwrite : bool
        A new run may replace a run already in ``out_dir`` (:func:`rundir.claim_fresh`).
    init_from : str, optional
        Start this new run from another run's checkpoint (a ``.npz``, or a run directory:
        its ``latest.npz``): parameters, feedback state, optimizer state, the alignment
        tracker and the epoch position carry over; the best validation accuracy, wall
        time and run id do not (see docs/experiments.md).
    """

    def __init__(self, cfg, out_dir, data, progress=True, log=print, command=None,
                 overwrite=False, init_from=None,
                 parallel=None):
        self.cfg = cfg
        # data-parallel group (minigrad_pfa.distributed.launch), None for one process
        self.parallel = parallel
        # the command line(s) that made this run: the original one, then each --resume
        self.commands = [str(command)] if command else []
        self.device = check_device(cfg["device"])
        self.paths = RunPaths(out_dir)
        self.data = data
        self.progress = progress
        self.log = log
        self.model, self.rule_summary = model_from_config(cfg, data.sample_shape)
        self.model.to(self.device)
        self.layers = list(weight_layers(self.model).values())
        self.optimizer = optimizer_from_config(cfg, self.model)
        self.lr_schedule, self.wd_schedule = schedules_from_config(cfg)
        # measured ||D_t|| / ||D_0|| of PFA / KP layers beside the decay law's prediction
        self.tracker = MechanismTracker(self.model, self.optimizer)
        self.select_on = cfg["eval"]["select_on"]
        if self.select_on == "auto":
            self.select_on = "val" if data.val is not None else "final"
        if self.select_on == "val" and data.val is None:
            raise ValueError("eval.select_on is 'val' but the config has no validation split "
                             "(set data.val_size > 0)")
        self.start_epoch = 0
        self.best_val = -math.inf
        self.best_epoch = None
        self.wall_before = 0.0
        self.run_id = None          # a new id in fit(); the run's own in resume()
        self.first_epoch = 0        # the first epoch this run trains (> 0: --init-from)
        self.overwrite = overwrite
        self._lock = None
        self.init_from = None if init_from is None else self._load_init_from(init_from)

    # ------------------------------------------------------------------ checkpoints
    def _state(self, epoch_done: int):
        arrays = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"optim/{k}": v for k, v in self.optimizer.state_dict().items()})
        arrays.update({f"tracker/{k}": v for k, v in self.tracker.state_dict().items()})
        meta = {"epoch_done": epoch_done, "best_val": self.best_val,
                "best_epoch": self.best_epoch, "config": self.cfg,
                "wall_s": self.wall_before, "version": 1, "argv": sys.argv,
                "commands": self.commands, "run_id": self.run_id}
        return arrays, meta

    def save(self, path, epoch_done):
        arrays, meta = self._state(epoch_done)
        save_checkpoint(path, arrays, meta)

    def load(self, path):
        arrays, meta = load_checkpoint(path)
        model_state = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
        optim_state = {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}
        tracker_state = {k[8:]: v for k, v in arrays.items() if k.startswith("tracker/")}
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optim_state)
        self.tracker.load_state_dict(tracker_state)
        return meta

    def _load_init_from(self, path):
        """``--init-from``: this new run starts from another run's checkpoint; returns what
        run.json records about the source."""
        ckpt = rundir.init_source(path)
        digest = rundir.sha256_file(ckpt)
        try:
            meta = self.load(ckpt)
        except CheckpointError as exc:
            raise rundir.RunDirError(f"--init-from: {exc}; give another checkpoint of that "
                                     "run (its latest.npz or best.npz)") from None
        except (KeyError, ValueError) as exc:
            raise rundir.RunDirError(
                f"--init-from {ckpt}: its state does not fit this config's model, rule or "
                f"optimizer ({exc}); change only the optimizer's values, the schedules or "
                "the epochs") from None
        self.start_epoch = self.first_epoch = meta["epoch_done"] + 1
        if self.start_epoch >= self.cfg["epochs"]:
            raise rundir.RunDirError(
                f"--init-from {ckpt}: it holds epoch {self.start_epoch} and the config trains "
                f"{self.cfg['epochs']} epochs, so nothing is left to train; raise epochs "
                "(--set epochs=N)")
        return {"run_id": meta.get("run_id"), "checkpoint": os.path.abspath(ckpt),
                "sha256": digest, "epoch_done": meta["epoch_done"],
                "config_changes": rundir.config_diff(_saved_config(meta), self.cfg)}

    def _begin_run(self):
        """A new run: lock the directory (refusing another run's files unless overwrite),
        then write run.json and config.yaml."""
        self._lock = rundir.claim_fresh(self.paths.root, self.overwrite, self.log)
        self.run_id = rundir.new_run_id()
        rundir.write_meta(self.paths.root, rundir.start_meta(
            self.run_id, self.commands[0] if self.commands else None, self.first_epoch,
            self.init_from))
        with open(self.paths.config, "w") as fh:
            yaml.safe_dump(self.cfg, fh, sort_keys=False)

    def _unlock_run(self):
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def resume(self):
        """Continue after the last finished epoch recorded in ``latest.npz``."""
        self._lock = rundir.claim_existing(self.paths.root, self.log)
        try:
            self._resume()
        except BaseException:
            self._unlock_run()
            raise

    def _resume(self):
        if not os.path.exists(self.paths.latest):
            raise FileNotFoundError(f"cannot resume: no checkpoint {self.paths.latest} "
                                    "(the run finished no epoch yet; start it again with "
                                    "--overwrite)")
        root = self.paths.root
        mixed = rundir.mixed_runs(root)
        if mixed:
            raise rundir.RunDirError(
                f"cannot resume {root}: its files belong to different runs ({mixed}); start "
                "afresh with --overwrite, or continue one of its checkpoints in a new "
                "directory with --init-from CHECKPOINT")
        run_meta = rundir.read_meta(root)
        try:
            meta = self.load(self.paths.latest)
        except CheckpointError as exc:
            raise CheckpointError(
                f"cannot resume {root}: {exc}. Start the run afresh (--overwrite), or "
                f"continue from its best.npz as a new run: minigrad-pfa train "
                f"{self.paths.config} --run-dir NEW_DIR --init-from {self.paths.best}") from None
        saved = _saved_config(meta)
        # the device may change (checkpoints are host arrays): a GPU run can finish on a
        # CPU; anything else would make the run a mixture of two configs
        diff = sorted(k for k in set(saved) | set(self.cfg)
                      if k != "device" and saved.get(k) != self.cfg.get(k))
        if diff:
            raise ValueError(f"cannot resume {self.paths.root}: the config differs from the "
                             f"saved one in {diff}; resume without --set overrides")
        if meta["config"].get("device") != self.cfg["device"]:
            self.log(f"note: continuing on {self.cfg['device']} a run that trained on "
                     f"{meta['config'].get('device')} (equal up to rounding, not bitwise)")
        self.start_epoch = meta["epoch_done"] + 1
        self.best_val = meta["best_val"] if meta["best_val"] is not None else -math.inf
        self.best_epoch = meta["best_epoch"]
        self.wall_before = meta.get("wall_s", 0.0)
        self.commands = list(meta.get("commands", [])) + self.commands
        self.run_id = meta.get("run_id")
        self.first_epoch = (run_meta or {}).get("first_epoch", 0)
        if self.run_id is None and run_meta is None:
            self.log(f"note: {root} was made before run ids; its files' identity is not "
                     "checked")
        self._truncate_metrics(self.start_epoch)
        self.log(f"resumed {self.paths.root} after epoch {meta['epoch_done']}")

    def _truncate_metrics(self, start_epoch):
        """Drop log lines of epochs that the resumed run will train again; a torn last line
        is dropped with a warning, a damaged needed line is an error
        (:func:`rundir.metrics_lines_to_keep`)."""
        fix = ("Restore the file from a copy, or continue from the checkpoint as a new run: "
               f"minigrad-pfa train {self.paths.config} --run-dir NEW_DIR --init-from "
               f"{self.paths.root}")
        for path, every_epoch in ((self.paths.metrics, True), (self.paths.metrics_steps, False)):
            if os.path.exists(path):
                keep = rundir.metrics_lines_to_keep(path, start_epoch, self.first_epoch,
                                                    every_epoch, self.log, fix)
                rundir.rewrite_lines(path, keep)

    # ------------------------------------------------------------------ main loop
    def _append_metrics(self, record):
        with open(self.paths.metrics, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def fit(self):
        """Train the remaining epochs, then evaluate the test set once (:meth:`finish`)."""
        if self._lock is None:              # a new run (resume() holds the lock already)
            try:
                self._begin_run()
            except BaseException:
                self._unlock_run()
                raise
        try:
            return self._fit()
        finally:
            self._unlock_run()

    def _fit(self):
        cfg = self.cfg
        self.log(f"run {self.paths.root}: {self.data.description}")
        self.log("rules: " + ", ".join(f"{n}={r}" for n, r in self.rule_summary))
        for epoch in range(self.start_epoch, cfg["epochs"]):
            record = self.train_epoch(epoch)
            self.end_epoch(epoch, record)
            self.log(self._log_line(record))
        return self.finish()

    def end_epoch(self, epoch, record):
        """Persist a finished epoch: best.npz (if improved), its metrics line, latest.npz.

        The order makes a kill at any point safe: until latest.npz is replaced, a resume
        re-does this epoch (deterministically) and drops its metrics line, and a best.npz
        written early holds what the re-done epoch writes again.
        """
        if self.select_on == "val" and record["val_acc"] > self.best_val:
            self.best_val, self.best_epoch = record["val_acc"], epoch
            self.save(self.paths.best, epoch)
        self._append_metrics(record)
        self.save(self.paths.latest, epoch)

    def train_epoch(self, epoch):
        from tqdm import tqdm  # local: the library does not need it otherwise

        t0 = time.perf_counter()
        loader = self.data.train
        loader.set_epoch(epoch)
        steps = len(loader)
        self.model.train()
        loss_sum, correct_sum, seen = 0.0, 0, 0
        check_every = 1 if self.device == "cpu" else 50
        every_n = self.cfg["metrics"]["every_n_steps"]
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.cfg['epochs']}",
                   disable=not self.progress, leave=False, file=sys.stderr, dynamic_ncols=True)
        pending = []
        for step, (x, y) in enumerate(loader):
            self.optimizer.lr = self.lr_schedule.value(epoch, step, steps)
            self.optimizer.weight_decay = self.wd_schedule.value(epoch, step, steps)
            if self.parallel is None:
                loss, correct = train_step(self.model, self.layers, self.optimizer, x, y)
                n = int(y.shape[0])
            else:
                with self.parallel.active():
                    loss, correct = train_step(self.model, self.layers, self.optimizer, x, y,
                                               self.parallel)
                n = int(y.shape[0]) * self.parallel.size  # equal shards
            self.tracker.step(self.optimizer.lr, self.optimizer.weight_decay)
            pending.append((loss, correct, n))
            if every_n and (epoch * steps + step + 1) % every_n == 0:
                self._step_metrics(epoch, step, steps)
            if len(pending) >= check_every:
                loss_sum, correct_sum, seen = self._drain(pending, loss_sum, correct_sum, seen,
                                                          epoch, step)
                bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}",
                                acc=f"{100.0 * correct_sum / max(seen, 1):.2f}")
            bar.update(1)
        loss_sum, correct_sum, seen = self._drain(pending, loss_sum, correct_sum, seen, epoch,
                                                  steps - 1)
        bar.close()
        train_time = time.perf_counter() - t0
        record = {"epoch": epoch, "run_id": self.run_id, "lr": self.optimizer.lr,
                  "weight_decay": self.optimizer.weight_decay,
                  "train_loss": loss_sum / seen, "train_acc": 100.0 * correct_sum / seen}
        if self.data.val is not None:
            record["val_loss"], record["val_acc"] = evaluate(self.model, self.data.val)
        if self.select_on == "final":
            # no validation split in the protocol: the per-epoch test curve is logged as an
            # *unselected* curve (never used to pick a checkpoint)
            record["test_loss_unselected"], record["test_acc_unselected"] = \
                evaluate(self.model, self.data.test)
        record.update(self._metrics())
        self.wall_before += time.perf_counter() - t0
        record["train_time_s"] = train_time
        record["wall_s"] = self.wall_before
        return record

    def _drain(self, pending, loss_sum, correct_sum, seen, epoch, step):
        if not pending:
            return loss_sum, correct_sum, seen
        # the (loss, count) pairs of every pending step stacked on the device and read back
        # in ONE device->host copy (on the GPU a sync; one per drain, not two per step)
        xp = get_array_module(pending[0][0])
        rows = to_numpy(xp.stack([xp.stack((xp.asarray(loss, dtype=xp.float64),
                                            xp.asarray(correct, dtype=xp.float64)))
                                  for loss, correct, _ in pending])).tolist()
        for (value, correct), (_, _, n) in zip(rows, pending):
            if not math.isfinite(value):
                raise DivergenceError(f"training diverged: the loss is {value} at epoch "
                                      f"{epoch + 1} (step {step + 1}); the run is stopped "
                                      f"and {self._divergence_advice(epoch)}")
            loss_sum += value * n
            correct_sum += int(correct)  # a float64 holding an integer count, exact
            seen += n
        pending.clear()
        return loss_sum, correct_sum, seen

    def _divergence_advice(self, epoch):
        if epoch > self.first_epoch and os.path.exists(self.paths.latest):
            return (f"the last good checkpoint is kept: {self.paths.latest} (after epoch "
                    f"{epoch}). To continue from it with a lower optim.lr (or another "
                    f"schedule) as a new run: minigrad-pfa train {self.paths.config} "
                    f"--run-dir NEW_DIR --init-from {self.paths.root} --set optim.lr=LOWER")
        return ("no checkpoint was written (it diverged in its first epoch). Lower optim.lr "
                "or check the rule's options, and start again with --overwrite.")

    def _metrics(self):
        if not self.cfg["metrics"]["every_epoch"]:
            return {}
        return collect_metrics(self.model, probe=self.data.probe, tracker=self.tracker)

    def _step_metrics(self, epoch, step, steps):
        """Per-N-steps alignment metrics, appended to ``metrics_steps.jsonl``."""
        record = {"epoch": epoch, "run_id": self.run_id, "step": step,
                  "global_step": epoch * steps + step + 1,
                  "lr": self.optimizer.lr, "weight_decay": self.optimizer.weight_decay}
        record.update(collect_metrics(self.model, probe=self.data.probe, tracker=self.tracker))
        with open(self.paths.metrics_steps, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _log_line(self, r):
        parts = [f"epoch {r['epoch'] + 1}/{self.cfg['epochs']}",
                 f"lr {r['lr']:.4g}", f"wd {r['weight_decay']:.3g}",
                 f"train loss {r['train_loss']:.4f} acc {r['train_acc']:.2f}"]
        if "val_acc" in r:
            parts.append(f"val acc {r['val_acc']:.2f}")
        if "test_acc_unselected" in r:
            parts.append(f"test acc {r['test_acc_unselected']:.2f} (unselected curve)")
        angles = [v for k, v in r.items() if k.endswith("/path_angle") and v is not None]
        if angles:
            parts.append("path angles " + "/".join(f"{a:.1f}" for a in angles))
        parts.append(f"{r['train_time_s']:.1f}s")
        return " | ".join(parts)

    def finish(self):
        """Evaluate the test set once on the selected checkpoint and write results.json."""
        if self.select_on == "val":
            meta = self.load(self.paths.best)
            chosen = meta["epoch_done"]
        else:
            chosen = self.cfg["epochs"] - 1
        test_loss, test_acc = evaluate(self.model, self.data.test)
        results = {"name": self.cfg["name"], "protocol": self.cfg.get("protocol"),
                   "rule": self.cfg["rule"], "seed": self.cfg["seed"],
                   "selected_on": self.select_on, "selected_epoch": chosen,
                   "best_val_acc": None if self.best_epoch is None else self.best_val,
                   "test_loss": test_loss, "test_acc": test_acc,
                   "epochs": self.cfg["epochs"], "wall_s": self.wall_before,
                   "device": self.device, "data": self.data.description,
                   # names the GPU, or says plainly that the test-only CuPy stand-in ran
                   "device_detail": device_description(self.device),
                   "machine": machine_description(), "commands": self.commands,
                   "run_id": self.run_id}
        tmp = self.paths.results + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(results, fh, indent=2)
        os.replace(tmp, self.paths.results)
        self.log(f"test acc {test_acc:.2f}% (checkpoint of epoch {chosen + 1}, selected on "
                 f"{self.select_on}); results in {self.paths.results}")
        return results


def _saved_config(meta: dict) -> dict:
    """The config a checkpoint was trained with; keys added to the schema since then take
    their defaults."""
    saved = meta["config"]
    try:
        return resolve_config(saved)
    except ConfigError:
        return saved


def machine_description() -> dict:
    import platform
    from .cpu import get_threads
    from .cpu.machine import cpu_model
    from .jit import get_cpu_kernels
    return {"node": platform.node(), "processor": cpu_model(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "threads": get_threads(),
            "cpu_kernels": get_cpu_kernels()}
