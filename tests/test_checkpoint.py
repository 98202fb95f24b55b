"""Checkpoints: exact round trips, atomic saves, corruption detection, bitwise resume."""
import json
import os
import stat
import zipfile

import numpy as np
import pytest

from minigrad_pfa.checkpoint import (CheckpointError, load_checkpoint, pack_state,
                                     rng_from_json, rng_set_state, rng_state_to_json,
                                     save_checkpoint, unpack_state)
from minigrad_pfa.nn.layers import Linear, ReLU, Sequential
from minigrad_pfa.optim import build_optimizer


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "model/fc1.weight": rng.standard_normal((5, 3)).astype(np.float32),
        "model/fc1.bias": rng.standard_normal(5),
        "optim/step": np.array(17, dtype=np.int64),
        "optim/type": np.array("sgd"),
        "optim/nesterov": np.array(True),
        "extra/ids": rng.integers(0, 255, size=(2, 2, 2), dtype=np.uint8),
        "extra/transposed": rng.standard_normal((3, 4)).T,       # non-contiguous input
        "extra/empty": np.zeros((0, 4), dtype=np.float32),
    }


def test_round_trip_is_exact(tmp_path):
    arrays = _arrays()
    meta = {"config": {"rule": "pfa", "lr": 0.01, "milestones": [20, 30]},
            "epoch": 3, "step": 120, "big": 2 ** 100 + 1, "nan": None, "unicode": "δ → λ",
            "np_scalars": [np.int64(3), np.float32(0.5), np.bool_(True)]}
    path = save_checkpoint(tmp_path / "a.npz", arrays, meta)
    assert path == str(tmp_path / "a.npz")
    got, got_meta = load_checkpoint(path)
    assert list(got) == list(arrays)                        # order preserved
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype and got[k].shape == a.shape, k
        assert np.array_equal(got[k], a), k
    meta["np_scalars"] = [3, 0.5, True]                      # NumPy scalars -> Python
    assert got_meta == meta
    assert sorted(os.listdir(tmp_path)) == ["a.npz"]         # no temporary left behind


def test_plain_numpy_reads_it_without_pickle(tmp_path):
    arrays = _arrays()
    save_checkpoint(tmp_path / "a.npz", arrays, {"epoch": 1})
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        assert set(z.files) == set(arrays) | {"__meta__"}
        assert np.array_equal(z["model/fc1.weight"], arrays["model/fc1.weight"])
        doc = json.loads(z["__meta__"].item())
    assert doc["meta"] == {"epoch": 1}


def test_object_arrays_and_bad_meta_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'x'.*object"):
        save_checkpoint(tmp_path / "a.npz", {"x": np.array([{"a": 1}], dtype=object)}, {})
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "a.npz", {"x": np.zeros(2)}, {"w": np.zeros(3)})
    with pytest.raises(ValueError, match="__meta__"):
        save_checkpoint(tmp_path / "a.npz", {"__meta__": np.zeros(2)}, {})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["PCG64", "MT19937", "Philox", "SFC64"])
def test_rng_state_round_trip_continues_the_stream(tmp_path, name):
    gen = np.random.Generator(getattr(np.random, name)(1234))
    gen.standard_normal(11)                                  # advance to a mid-stream state
    gen.integers(0, 10, size=3)                              # PCG64: leaves a buffered uint32
    saved = rng_state_to_json(gen)
    expected = np.concatenate([gen.standard_normal(7), gen.random(5),
                               gen.integers(0, 2 ** 31, size=5)])
    save_checkpoint(tmp_path / "r.npz", {"x": np.zeros(1)}, {"rng": saved})
    _, meta = load_checkpoint(tmp_path / "r.npz")
    fresh = rng_from_json(meta["rng"])
    got = np.concatenate([fresh.standard_normal(7), fresh.random(5),
                          fresh.integers(0, 2 ** 31, size=5)])
    assert np.array_equal(got, expected)
    # restoring into an existing generator (which other objects hold) works too
    other = np.random.Generator(getattr(np.random, name)(999))
    rng_set_state(other, meta["rng"])
    assert np.array_equal(other.standard_normal(7), expected[:7])


def test_rng_errors():
    with pytest.raises(ValueError, match="bit generator"):
        rng_from_json({"bit_generator": "os.system"})
    with pytest.raises(ValueError, match="PCG64"):
        rng_set_state(np.random.default_rng(0),
                      rng_state_to_json(np.random.Generator(np.random.MT19937(0))))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.npz.*does not exist"):
        load_checkpoint(tmp_path / "nope.npz")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_truncated_file_is_rejected(tmp_path, keep):
    path = tmp_path / "a.npz"
    save_checkpoint(path, _arrays(), {"epoch": 1})
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "truncated or corrupt" in msg
    # the reader does not know why it was called: no advice about --resume here
    assert "--resume" not in msg and "earlier checkpoint" not in msg


@pytest.mark.parametrize("byte", [0, 1, 3])
def test_corrupt_leading_bytes_never_suggest_unsafe_loading(tmp_path, byte):
    """A damaged zip header made NumPy try the file as a pickle and advise
    allow_pickle=True; the message must name the file and never suggest that."""
    from minigrad_pfa.checkpoint import read_checkpoint_meta

    path = tmp_path / "a.npz"
    save_checkpoint(path, _arrays(), {"epoch": 1})
    data = bytearray(path.read_bytes())
    data[byte] ^= 0xFF
    path.write_bytes(bytes(data))
    for reader in (load_checkpoint, read_checkpoint_meta):
        with pytest.raises(CheckpointError) as info:
            reader(path)
        msg = str(info.value)
        assert str(path) in msg and "not an .npz" in msg
        assert "pickle" not in msg.lower()


def test_garbage_and_flipped_bytes_are_rejected(tmp_path):
    path = tmp_path / "a.npz"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="a.npz"):
        load_checkpoint(path)
    big = {"w": np.arange(4096, dtype=np.float64)}
    save_checkpoint(path, big, {})
    data = bytearray(path.read_bytes())
    i = data.find(np.arange(4096, dtype=np.float64)[2000:2001].tobytes())
    assert i > 0
    data[i] ^= 0xFF                                          # corrupt one payload byte
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="a.npz"):
        load_checkpoint(path)


def test_checksum_catches_a_consistently_replaced_member(tmp_path):
    """A valid zip whose array was swapped (CRC fine): only the sha256 index can tell."""
    path = tmp_path / "a.npz"
    save_checkpoint(path, {"w": np.ones(8), "v": np.zeros(3)}, {"epoch": 2})
    with np.load(path, allow_pickle=False) as z:
        meta = z["__meta__"]
    forged = tmp_path / "forged.npz"
    np.savez(forged, w=np.ones(8) * 2.0, v=np.zeros(3), __meta__=meta)
    with pytest.raises(CheckpointError, match="'w'.*sha256"):
        load_checkpoint(forged)
    load_checkpoint(forged, verify=False)                    # readable when asked not to check
    np.savez(forged, w=np.ones(8), __meta__=meta)            # an array missing
    with pytest.raises(CheckpointError, match="'v'"):
        load_checkpoint(forged)
    np.savez(forged, w=np.ones(8), v=np.zeros(3))            # no metadata at all
    with pytest.raises(CheckpointError, match="__meta__"):
        load_checkpoint(forged)


def _half_written_savez(file, *args, **kwds):
    """Stand-in for np.savez that dies half-way through writing the archive."""
    with zipfile.ZipFile(file, mode="w") as zf:
        zf.writestr("partial.npy", b"\x93NUMPY" + b"\x00" * 100)
    raise OSError("No space left on device")


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.npz"
    old = _arrays(seed=1)
    save_checkpoint(path, old, {"epoch": 1})
    new = _arrays(seed=2)

    monkeypatch.setattr(np, "savez", _half_written_savez)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, new, {"epoch": 2})
    monkeypatch.undo()

    def failing_replace(src, dst):
        raise KeyboardInterrupt                              # e.g. Ctrl-C at the last moment
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, new, {"epoch": 2})
    monkeypatch.undo()

    got, meta = load_checkpoint(path)
    assert meta == {"epoch": 1}
    for k in old:
        assert np.array_equal(got[k], old[k])
    assert os.listdir(tmp_path) == ["last.npz"]              # temporaries cleaned up
    save_checkpoint(path, new, {"epoch": 2})                 # a later save replaces it
    assert load_checkpoint(path)[1] == {"epoch": 2}


# ---------------------------------------------------------------------- training resume
def _mlp(seed):
    rng = np.random.default_rng(seed)
    net = Sequential(Linear(6, 8), ReLU(), Linear(8, 3))
    for _, p in net.named_parameters():
        p.data[...] = rng.standard_normal(p.data.shape).astype(p.data.dtype) * 0.3
    return net


def _train(net, opt, data_rng, n_steps):
    """Least-squares steps y = net(x) toward a target, gradients by hand (BP)."""
    losses = []
    for _ in range(n_steps):
        x = data_rng.standard_normal((4, 6)).astype(np.float32)
        target = data_rng.standard_normal((4, 3)).astype(np.float32)
        y = net.forward(x)
        losses.append(float(0.5 * np.sum((y - target) ** 2)))
        net.backward(y - target)
        opt.step()
    return losses


@pytest.mark.parametrize("name,kw", [("sgd", dict(lr=0.05, momentum=0.9, weight_decay=1e-3,
                                                  nesterov=True)),
                                     ("adamw", dict(lr=0.01))])
def test_resumed_run_equals_uninterrupted(tmp_path, name, kw):
    ref_net = _mlp(0)
    ref_opt = build_optimizer(name, list(ref_net.named_parameters()), **kw)
    ref_losses = _train(ref_net, ref_opt, np.random.default_rng(5), 6)

    net = _mlp(0)
    opt = build_optimizer(name, list(net.named_parameters()), **kw)
    data_rng = np.random.default_rng(5)
    losses = _train(net, opt, data_rng, 3)
    save_checkpoint(tmp_path / "c.npz",
                    pack_state(net, opt, extra_arrays={"best": np.array(0.5)}),
                    {"step": 3, "data_rng": rng_state_to_json(data_rng)})

    net2 = _mlp(99)                                          # different weights, fresh state
    opt2 = build_optimizer(name, list(net2.named_parameters()), **kw)
    arrays, meta = load_checkpoint(tmp_path / "c.npz")
    extra = unpack_state(arrays, net2, opt2)
    assert list(extra) == ["best"] and float(extra["best"]) == 0.5
    losses += _train(net2, opt2, rng_from_json(meta["data_rng"]), 3)

    assert losses == ref_losses                              # bitwise identical curve
    for (k, p), (_, q) in zip(ref_net.named_parameters(), net2.named_parameters()):
        assert np.array_equal(p.data, q.data) and q.data.dtype == np.float32, k


def test_unpack_state_errors():
    net = _mlp(0)
    opt = build_optimizer("sgd", list(net.named_parameters()), lr=0.1, momentum=0.9)
    state = pack_state(net, None)
    with pytest.raises(CheckpointError, match="optimizer state"):
        unpack_state(state, net, opt)
    unpack_state(state, net, None)                           # evaluation-only load is fine
    with pytest.raises(CheckpointError, match="model/"):
        unpack_state({"optim/step": np.array(1)}, net, None, strict=False)
    with pytest.raises(KeyError, match="stray"):
        unpack_state(dict(state, stray=np.zeros(1)), net, None)


def test_cupy_arrays_are_saved_from_the_host(tmp_path, xp):
    a = xp.arange(6, dtype=xp.float32).reshape(2, 3)
    save_checkpoint(tmp_path / "g.npz", {"a": a}, {})
    got, _ = load_checkpoint(tmp_path / "g.npz")
    assert isinstance(got["a"], np.ndarray)
    assert np.array_equal(got["a"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_checkpoint_file_mode_follows_the_umask(tmp_path):
    """Atomic saves go through mkstemp (mode 0600); the final file gets what open() would
    give it under the process umask, so shared run directories stay readable."""
    old = os.umask(0o027)
    try:
        path = save_checkpoint(str(tmp_path / "a.npz"), {"w": np.ones(3)})
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        os.umask(0o022)
        save_checkpoint(path, {"w": np.zeros(3)})           # a replacement, too
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    finally:
        os.umask(old)
