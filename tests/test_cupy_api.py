"""The engine only uses array-module names that CuPy has, and NumPy and CuPy agree.

API check (runs without a GPU; needs only an importable CuPy): every ``minigrad_pfa``
source file is parsed with :mod:`ast` and every attribute chain on the array module is
collected:

* chains on ``xp`` (the engine's convention, ``xp = get_array_module(...)``), on any other
  name bound from ``get_array_module(...)`` / ``cupy_module()``, on ``get_array_module(a)``
  itself (``get_array_module(v).tile``), and on backend's ``_cupy``;
* ``np.<...>`` chains inside functions that call ``get_array_module`` (they receive device
  arrays, so a NumPy-only function there would break on the GPU);
* methods called on arrays (``a.<name>(...)`` where ``<name>`` is a ``numpy.ndarray``
  method) in the engine's maths and model packages.

Each must resolve on the ``cupy`` module (or ``cupy.ndarray``). Parity (GPU only): a small
ResNet's forward/backward and an MLP training step give the same numbers on both.
"""
import ast
import pathlib
from collections import defaultdict

import numpy as np
import pytest

import minigrad_pfa
from minigrad_pfa.backend import DeviceError, cuda_available, cupy_module

ROOT = pathlib.Path(minigrad_pfa.__file__).parent
#: packages whose ``a.method(...)`` calls are checked against cupy.ndarray
ARRAY_METHOD_PACKAGES = ("functional", "nn", "rules", "optim", "metrics")
#: names that are never array objects although they take ``.<ndarray method>(...)``
NOT_ARRAYS = {"np", "xp", "cp", "_cupy", "os", "json", "math", "self", "hashlib", "re",
              "torch", "fh", "f", "z", "sys", "shutil", "tempfile", "time", "yaml"}
ARRAY_MODULE_FACTORIES = {"get_array_module", "cupy_module"}


def cupy_or_skip():
    try:
        return cupy_module()
    except DeviceError as exc:
        pytest.skip(f"CuPy is not installed, so its API cannot be checked: {exc}")


def _chain(node):
    """``a.b.c`` -> ["a", "b", "c"]; None when the base is not a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def _factory_call(node):
    return (isinstance(node, ast.Call) and (_chain(node.func) or [""])[-1]
            in ARRAY_MODULE_FACTORIES)


def _maximal_attributes(tree):
    """Attribute nodes that are not themselves the base of a longer chain."""
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and id(n) not in inner]


def collect_array_module_uses(root=ROOT, sources=None):
    """{"xp.name.sub": ["file:line", ...]} (array-module chains, normalised to ``xp.``),
    and {"method": [...]} for array methods. ``sources`` ({name: text}) replaces the
    package's files (used to test the collector itself)."""
    if sources is None:
        sources = {str(p.relative_to(root.parent)): p.read_text()
                   for p in sorted(root.rglob("*.py"))}
    chains, methods = defaultdict(list), defaultdict(list)
    for fname, text in sources.items():
        tree = ast.parse(text, fname)
        bound = {"xp"} | ({"_cupy"} if fname.endswith("backend.py") else set())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _factory_call(node.value):
                bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        # functions receiving device arrays: those asking for the array module
        np_scopes = [fn for fn in ast.walk(tree)
                     if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and any(_factory_call(n) for n in ast.walk(fn))]
        np_nodes = {id(n) for fn in np_scopes for n in _maximal_attributes(fn)}
        for node in _maximal_attributes(tree):
            where = f"{fname}:{node.lineno}"
            c = _chain(node)
            if c is None:
                base, attrs = node, []
                while isinstance(base, ast.Attribute):
                    attrs.append(base.attr)
                    base = base.value
                if _factory_call(base):  # get_array_module(v).tile
                    chains["xp." + ".".join(attrs[::-1])].append(where)
                continue
            if c[0] in bound or (c[0] == "np" and id(node) in np_nodes):
                chains[".".join(["xp"] + c[1:])].append(where)
        in_array_pkg = any(f"/{pkg}/" in "/" + fname.replace("\\", "/")
                           for pkg in ARRAY_METHOD_PACKAGES)
        if in_array_pkg:
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    base = node.func.value
                    if isinstance(base, ast.Name) and base.id in NOT_ARRAYS:
                        continue
                    name = node.func.attr
                    if hasattr(np.ndarray, name) and not name.startswith("_"):
                        methods[name].append(f"{fname}:{node.lineno}")
    return chains, methods


def resolve(module, chain):
    obj = module
    for part in chain.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def missing_in_cupy(cp, chains, methods):
    bad = []
    for chain, wheres in sorted(chains.items()):
        try:
            resolve(cp, chain)
        except AttributeError:
            bad.append(f"{chain.replace('xp.', 'cupy.', 1)} (used at {', '.join(wheres[:3])})")
    for name, wheres in sorted(methods.items()):
        if not hasattr(cp.ndarray, name):
            bad.append(f"cupy.ndarray.{name} (used at {', '.join(wheres[:3])})")
    return bad


# ------------------------------------------------------------------------ API existence
def test_every_array_module_name_exists_in_cupy():
    cp = cupy_or_skip()
    chains, methods = collect_array_module_uses()
    # the collector does see the engine's array code (so this test can fail)
    for expected in ("xp.lib.stride_tricks.as_strided", "xp.zeros", "xp.sqrt", "xp.tile",
                     "xp.einsum", "xp.take_along_axis", "xp.cuda.runtime.getDeviceCount"):
        assert expected in chains, expected
    assert {"transpose", "reshape", "astype", "sum"} <= set(methods)
    assert len(chains) > 30
    bad = missing_in_cupy(cp, chains, methods)
    assert not bad, "names used by the engine that CuPy lacks:\n" + "\n".join(bad)


def test_the_collector_flags_names_cupy_lacks():
    cp = cupy_or_skip()
    src = '''
import numpy as np
from minigrad_pfa.backend import get_array_module

def f(x):
    xp = get_array_module(x)
    mod = get_array_module(x)
    y = xp.zeros(3) + mod.not_in_cupy_either(x) + get_array_module(x).ones(2)
    z = np.no_such_numpy_function(x)
    return xp.linalg.norm(y) + xp.fancy_missing_name(z) + x.setflags(write=False)

def host_only():
    return np.only_used_on_the_host()
'''
    chains, methods = collect_array_module_uses(
        sources={"minigrad_pfa/functional/fake.py": src})
    assert set(chains) == {"xp.zeros", "xp.not_in_cupy_either", "xp.ones",
                           "xp.no_such_numpy_function", "xp.linalg.norm",
                           "xp.fancy_missing_name"}
    assert "setflags" in methods
    bad = missing_in_cupy(cp, chains, methods)
    assert [b.split(" ")[0] for b in bad] == [
        "cupy.fancy_missing_name", "cupy.no_such_numpy_function", "cupy.not_in_cupy_either",
        "cupy.ndarray.setflags"]


# ------------------------------------------------------------------------ NumPy / CuPy parity
needs_gpu = pytest.mark.skipif(not cuda_available(),
                               reason="NumPy/CuPy parity needs CuPy and a CUDA device")


def _rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _forward_backward(model, x, y):
    from minigrad_pfa.backend import to_numpy
    from minigrad_pfa.functional.loss import softmax_cross_entropy
    from minigrad_pfa.nn.module import BackwardContext
    logits = model.forward(x)
    loss, e = softmax_cross_entropy(logits, y)
    model.backward(e, BackwardContext(output_error=e))
    grads = {n: to_numpy(p.grad) for n, p in model.named_parameters()}
    return to_numpy(logits), float(loss), grads


@needs_gpu
@pytest.mark.parametrize("name,shape,kw", [
    ("resnet20", (3, 16, 16), {}),
    ("resnet18", (3, 32, 32), {"num_classes": 10}),
])
def test_resnet_forward_backward_parity(name, shape, kw):
    from minigrad_pfa.backend import to_device, to_numpy
    from minigrad_pfa.nn.models import build_model
    cpu = build_model(name, seed=0, dtype="float64", **kw)
    gpu = build_model(name, seed=0, dtype="float64", **kw).to("cuda")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4,) + shape)
    y = rng.integers(0, 10, 4)
    l1, loss1, g1 = _forward_backward(cpu, x, y)
    l2, loss2, g2 = _forward_backward(gpu, to_device(x, "cuda"), to_device(y, "cuda"))
    assert _rel(l2, l1) < 1e-10 and abs(loss1 - loss2) < 1e-10
    bad = {n: _rel(g2[n], g1[n]) for n in g1 if not _rel(g2[n], g1[n]) < 1e-9}
    assert not bad
    for (k, a), (_, b) in zip(cpu.named_buffers(), gpu.named_buffers()):
        assert _rel(to_numpy(b), a) < 1e-10, k


@needs_gpu
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_mlp_training_step_parity(dtype, tol):
    from minigrad_pfa.backend import device_of, to_device, to_numpy
    from minigrad_pfa.nn.models import build_model, weight_layers
    from minigrad_pfa.optim import build_optimizer
    from minigrad_pfa.train import train_step
    models = [build_model("mlp", seed=0, dtype=dtype, in_features=64, hidden=(32, 16)),
              build_model("mlp", seed=0, dtype=dtype, in_features=64, hidden=(32, 16)).to("cuda")]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 64)).astype(dtype)
    y = rng.integers(0, 10, 16)
    losses = []
    for m in models:
        opt = build_optimizer("sgd", list(m.named_parameters()), lr=0.1, momentum=0.9,
                              weight_decay=5e-4)
        dev = m.device
        xs, ys = to_device(x, dev), to_device(y, dev)
        ls = []
        for _ in range(3):
            loss, _ = train_step(m, list(weight_layers(m).values()), opt, xs, ys)
            ls.append(float(loss))
        losses.append(ls)
        for _, p in m.named_parameters():
            assert device_of(p.data) == dev and p.data.dtype == np.dtype(dtype)
    assert np.allclose(losses[0], losses[1], rtol=tol, atol=0)
    for (n, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        assert _rel(to_numpy(b.data), a.data) < tol, n


@needs_gpu
def test_to_cuda_and_back_keeps_values():
    from minigrad_pfa.nn.models import build_model
    m = build_model("resnet20", seed=0)
    ref = {k: np.array(v) for k, v in m.state_dict().items()}
    m.to("cuda")
    assert m.device == "cuda"
    m.to("cpu")
    for k, v in m.state_dict().items():
        assert isinstance(v, np.ndarray) and np.array_equal(v, ref[k]), k
