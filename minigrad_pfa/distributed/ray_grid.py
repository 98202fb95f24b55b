"""``minigrad-pfa grid CONFIGS... --backend ray [--address auto|HOST:PORT]``: a grid on Ray.

The grid is the local one (:mod:`minigrad_pfa.grid`: planning, skip / resume / refuse
states, log files, summary); only *where* each run's ``train`` command executes changes:
every config x seed becomes one Ray task that runs the same command as a subprocess on a
Ray worker, with ``num_cpus`` = its BLAS threads (``--threads``, default 1), so Ray packs
the runs onto the cluster's CPUs. Without ``--address`` a local Ray instance is started
(and shut down at the end); with one, the driver joins that cluster.

Assumptions on a cluster: the run directories (``--out``) and the package are on a
filesystem every node sees under the same paths (the task reads the config, writes
``log.txt`` and the run files there, and the driver reads ``results.json``); the workers'
Python has the package and its dependencies.

Failure and interruption: a task whose run fails returns its exit status like a local
child (the run is reported FAILED, the others go on); a worker that dies is reported as a
failed run. Ctrl-C cancels every task: a running task forwards SIGINT to its ``train``
child (which stops after checkpointing, as in a local grid) and waits for it; queued tasks
never start.
"""
from __future__ import annotations

import signal
import subprocess
import time


def import_ray():
    """``ray``, or a MissingDependency (an ImportError) that names the fix."""
    from .comm import MissingDependency
    try:
        import ray
    except ImportError as exc:
        raise MissingDependency(f"--backend ray needs Ray: pip install 'minigrad_pfa[ray]' ({exc})") \
            from None
    return ray


#: written into a run directory by the driver to stop that run's task (Ctrl-C)
STOP_FILE = "grid.stop"


def _default_sigint():
    # Ray workers ignore (and their threads block) SIGINT, and both survive exec: the child
    # gets the default disposition and an unblocked SIGINT back, so Python installs its
    # KeyboardInterrupt handler and the signal reaches it
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def run_train_command(cmd: list, log_path: str, env_delta: dict, cwd: str,
                      stop_path: str) -> int:
    """Body of a Ray task: run ``cmd`` (a ``minigrad_pfa.cli train`` command, its first word
    replaced by this worker's Python) in the driver's directory ``cwd``, its output appended
    to ``log_path``. When ``stop_path`` appears (the driver's Ctrl-C) or the task is
    cancelled, forward SIGINT to the child (it stops after its last checkpoint), then
    SIGTERM after 60 s. Returns the child's exit status.

    Why a file and not only ``ray.cancel``: a cancellation reaches a task as an exception
    in the worker, not as a signal to the child it started; the file (on the filesystem the
    run directory is on, shared by assumption) reaches the task on any node.
    """
    import os
    import sys

    env = dict(os.environ)
    env.update(env_delta)
    cmd = [sys.executable] + list(cmd[1:])
    if os.path.exists(stop_path):
        os.remove(stop_path)  # left by an earlier interrupted grid
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd if os.path.isdir(cwd) else None,
                                preexec_fn=_default_sigint)
    try:
        while not os.path.exists(stop_path):
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
    except KeyboardInterrupt:
        pass
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.terminate()
        return proc.wait()
    finally:
        if os.path.exists(stop_path):
            os.remove(stop_path)


class RayRun:
    """A grid run executing as a Ray task, with the part of ``subprocess.Popen``'s interface
    that :func:`minigrad_pfa.grid.run_grid` uses (``poll``, ``wait``, ``send_signal``,
    ``returncode``)."""

    def __init__(self, ray, ref, stop_path: str):
        self.ray, self.ref, self.stop_path = ray, ref, stop_path
        self.returncode = None
        self.error = None

    def poll(self):
        if self.returncode is None:
            done, _ = self.ray.wait([self.ref], timeout=0)
            if done:
                self._collect()
        return self.returncode

    def _collect(self):
        try:
            self.returncode = int(self.ray.get(self.ref))
        except Exception as exc:  # the task died, was cancelled, or its worker was lost
            self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.returncode = -1

    def wait(self, timeout=None):
        done, _ = self.ray.wait([self.ref], timeout=timeout)
        if not done:
            raise subprocess.TimeoutExpired("ray task", timeout)
        self._collect()
        return self.returncode

    def send_signal(self, sig):
        # SIGINT (the grid's Ctrl-C): the stop file tells a running task to pass SIGINT to
        # its child; the cancellation keeps a queued task from starting. Anything stronger
        # (the grid's last resort, SIGTERM): end the worker process itself
        if sig == signal.SIGINT:
            with open(self.stop_path, "w") as fh:
                fh.write("stop\n")
        self.ray.cancel(self.ref, force=sig != signal.SIGINT)


class RayLauncher:
    """Start grid runs as Ray tasks (``launcher`` of :func:`minigrad_pfa.grid.run_grid`).

    Parameters
    ----------
    address : str, optional
        ``"auto"`` or ``"HOST:PORT"`` of a running cluster; None starts a local instance.
    threads : int
        BLAS threads of every run = its ``num_cpus``.
    """

    def __init__(self, address: str | None = None, threads: int = 1):
        self.ray = import_ray()
        self.threads = int(threads)
        self.local = address is None
        if not self.ray.is_initialized():
            kwargs = {"include_dashboard": False, "logging_level": "WARNING",
                      "log_to_driver": False}
            self.ray.init(address=address, **kwargs)
        self.task = self.ray.remote(run_train_command).options(num_cpus=self.threads,
                                                               max_retries=0)

    def __call__(self, run, cmd, env):
        from ..grid import THREAD_VARS
        from ..jit import CPU_KERNELS_ENV
        delta = {k: env[k] for k in THREAD_VARS + (CPU_KERNELS_ENV,) if k in env}
        if env.get("PYTHONPATH"):
            delta["PYTHONPATH"] = env["PYTHONPATH"]
        import os
        stop = os.path.abspath(os.path.join(run.run_dir, STOP_FILE))
        ref = self.task.remote(list(cmd), os.path.abspath(run.log), delta, os.getcwd(), stop)
        return RayRun(self.ray, ref, stop)

    def cluster_cpus(self) -> int:
        return int(self.ray.cluster_resources().get("CPU", 1))

    def close(self):
        if self.local and self.ray.is_initialized():
            self.ray.shutdown()


def run_grid_ray(runs, address=None, device=None, threads=None, echo=print, poll_s=0.5,
                 cpu_kernels=None):
    """:func:`minigrad_pfa.grid.run_grid` with every run a Ray task (module docstring)."""
    from ..grid import run_grid

    threads = int(threads or 1)
    todo = sum(r.state in ("new", "partial") for r in runs)
    if not todo:  # nothing to start: no Ray needed to skip or refuse
        return run_grid(runs, device=device, threads=threads, echo=echo, poll_s=poll_s,
                        cpu_kernels=cpu_kernels)
    t0 = time.time()
    launcher = RayLauncher(address, threads)
    try:
        where = "a local Ray instance" if launcher.local else f"the Ray cluster at {address}"
        echo(f"grid on {where} ({launcher.cluster_cpus()} CPUs, started in "
             f"{time.time() - t0:.1f} s); {threads} CPU(s) per run")
        # every run is submitted at once: Ray queues them by CPUs
        return run_grid(runs, jobs=max(1, todo), device=device, threads=threads, echo=echo,
                        poll_s=poll_s, launcher=launcher, cpu_kernels=cpu_kernels)
    finally:
        launcher.close()
