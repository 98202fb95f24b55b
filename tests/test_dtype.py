"""dtype discipline: a float32 training step creates no float64 array, and float64 mode
works end to end.

The float32 step (rule hooks, forward, loss, backward, optimizer step) is run on an MLP
and a ResNet-8 with batch norm (CIFAR layout, option-A shortcuts), under BP and under every
registered learning rule, with the optimizer's ``lr``/``weight_decay`` set to NumPy float64
scalars (as a schedule may produce them; NEP 50 would promote ``float32 * np.float64``).
Checked: every parameter, gradient and buffer, every forward-cache entry, every array a
rule keeps on itself, the optimizer's state, the logits, the loss, the output error, and
the output of every module's ``forward`` and ``backward`` (recorded by wrapping them).

Deliberate float64 places (outside the training step, so not flagged here):

* ``minigrad_pfa/metrics/measures.py``: the sums ``<A, C>``, ``||A||^2``, ``||C||^2`` of the
  alignment measures are accumulated in float64 (float32 sums of ~1e6 products are too
  coarse for angles near 0 or 90 degrees);
* ``minigrad_pfa/train.py`` ``evaluate`` and the epoch loss: host accumulation of
  per-batch losses in Python floats;
* ``Optimizer.state_dict``: hyper-parameters stored as 0-d float64 host arrays (checkpoints);
* feedback matrices are drawn on the host in float64 (``minigrad_pfa/rules/draw.py``,
  frSF's reference copy, WM's tap counts) and cast to the layer's dtype before use.
"""
import numpy as np
import pytest

from minigrad_pfa.functional.loss import softmax_cross_entropy
from minigrad_pfa.nn.models import build_model, finalize, init_model, weight_layers
from minigrad_pfa.nn.module import BackwardContext
from minigrad_pfa.nn.resnet import CifarResNet
from minigrad_pfa.optim import build_optimizer
from minigrad_pfa.rules import attach_rules
from minigrad_pfa.rules.registry import RULES
from minigrad_pfa.train import evaluate, train_step

ARRAY_TYPES = (np.ndarray,)
try:  # CuPy arrays count too when a test runs on the GPU
    from minigrad_pfa.backend import cupy_module
    ARRAY_TYPES = (np.ndarray, cupy_module().ndarray)
except Exception:  # pragma: no cover - CuPy not installed
    pass


# ---------------------------------------------------------------------------- recording
class Recorder:
    """Wraps every module's forward/backward (instance attributes) to keep their outputs."""

    def __init__(self, model):
        self.outputs = []
        for name, m in model.named_modules():
            self._wrap(name or "<model>", m)

    def _wrap(self, name, m):
        fwd, bwd = m.forward, m.backward
        rec = self.outputs

        def forward(x):
            y = fwd(x)
            rec.append((f"{name}.forward", y))
            return y

        def backward(dy, ctx=None):
            dx = bwd(dy, ctx)
            rec.append((f"{name}.backward", dx))
            return dx

        object.__setattr__(m, "forward", forward)
        object.__setattr__(m, "backward", backward)


def arrays_in(obj, where, seen=None):
    """Every array reachable through dicts, lists, tuples and plain objects' ``__dict__``."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, ARRAY_TYPES):
        yield where, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from arrays_in(v, f"{where}[{k!r}]", seen)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from arrays_in(v, f"{where}[{i}]", seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type) and \
            type(obj).__module__.startswith("minigrad_pfa"):
        yield from arrays_in(vars(obj), f"{where}.", seen)
    elif isinstance(obj, np.random.Generator):
        return


def float64_arrays(model, optimizer, recorder, extra):
    """(where, dtype) of every float64 array of the step's state and outputs."""
    found = []

    def check(where, a):
        if a is not None and getattr(a, "dtype", None) == np.float64:
            found.append((where, a.dtype))

    for name, p in model.named_parameters():
        check(f"param {name}", p.data)
        check(f"grad {name}", p.grad)
    for name, b in model.named_buffers():
        check(f"buffer {name}", b)
    for mname, m in model.named_modules():
        for where, a in arrays_in(m.cache, f"cache {mname or '<model>'}"):
            check(where, a)
    for lname, layer in weight_layers(model).items():
        for where, a in arrays_in(vars(layer.rule), f"rule of {lname}"):
            check(where, a)
    for where, a in arrays_in(optimizer.state, "optimizer state"):
        check(where, a)
    for where, a in recorder.outputs:
        check(where, a)
    for where, a in extra.items():
        check(where, a)
    return found


def make(kind, dtype, rule="bp"):
    if kind == "mlp":
        model = build_model("mlp", seed=0, dtype=dtype, in_features=3 * 8 * 8, hidden=(16, 12))
    else:
        model = init_model(finalize(CifarResNet(depth=8, dtype=dtype)), 0)
    shape = (3, 8, 8) if kind == "mlp" else (3, 16, 16)
    if rule != "bp":
        attach_rules(model, rule, seed=1, input_shape=shape)
    return model, shape


def batch(shape, dtype, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + shape).astype(dtype), rng.integers(0, 10, n)


# ---------------------------------------------------------------------------- float32 step
@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("kind", ["mlp", "resnet8"])
@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_float32_step_creates_no_float64(kind, rule, opt_name):
    model, shape = make(kind, "float32", rule)
    layers = list(weight_layers(model).values())
    kw = {"lr": 0.1, "momentum": 0.9} if opt_name == "sgd" else {"lr": 1e-3}
    opt = build_optimizer(opt_name, list(model.named_parameters(trainable_only=True)), **kw)
    # schedules may hand out NumPy scalars (NEP 50: float32 * np.float64 -> float64)
    opt.lr, opt.weight_decay = np.float64(kw["lr"]), np.float64(5e-4)
    rec = Recorder(model)
    x, y = batch(shape, "float32")
    for step in range(2):  # the second step sees momentum buffers / Adam moments
        rec.outputs.clear()
        for layer in layers:
            layer.rule.before_step(layer)
        logits = model.forward(x)
        loss, e = softmax_cross_entropy(logits, y)
        model.backward(e, BackwardContext(output_error=e))
        opt.step()
        for layer in layers:
            layer.rule.after_step(layer)
        assert logits.dtype == np.float32
        bad = float64_arrays(model, opt, rec, {"logits": logits, "loss": loss, "e": e})
        assert not bad, f"float64 arrays in a float32 {rule} step: {bad[:10]}"
        # and everything float is float32 (nothing silently became float16 or an object)
        for name, p in model.named_parameters():
            assert p.data.dtype == np.float32, name
            if p.requires_grad:
                assert p.grad is not None and p.grad.dtype == np.float32, name
    assert len(rec.outputs) > 2 * len(list(model.named_modules())) - 2
    assert np.isfinite(float(loss))


def test_the_check_finds_float64_arrays():
    """The check can fail: on a float64 model it reports params, caches and outputs."""
    model, shape = make("mlp", "float64")
    rec = Recorder(model)
    logits = model.forward(batch(shape, "float64")[0])
    opt = build_optimizer("sgd", list(model.named_parameters()), lr=0.1)
    wheres = {w for w, _ in float64_arrays(model, opt, rec, {"logits": logits})}
    assert {"fc.forward", "param fc.weight", "cache fc['x']", "logits"} <= wheres


# ---------------------------------------------------------------------------- float64 mode
@pytest.mark.parametrize("kind", ["mlp", "resnet8"])
def test_float64_end_to_end(kind):
    """float64 models train (loss goes down on a fixed batch) and evaluate, and every
    array stays float64."""
    model, shape = make(kind, "float64")
    layers = list(weight_layers(model).values())
    opt = build_optimizer("sgd", list(model.named_parameters(trainable_only=True)), lr=0.05,
                          momentum=0.9, weight_decay=5e-4)
    x, y = batch(shape, "float64", n=8)
    losses = []
    for _ in range(8):
        loss, correct = train_step(model, layers, opt, x, y)
        assert loss.dtype == np.float64
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
    for name, p in model.named_parameters():
        assert p.data.dtype == np.float64 and p.grad.dtype == np.float64, name
    for name, b in model.named_buffers():
        assert b.dtype == (np.int64 if name.endswith("num_batches_tracked") else np.float64), name
    for name, st in opt.state.items():
        assert st["momentum_buffer"].dtype == np.float64, name
    eval_loss, acc = evaluate(model, [(x[:4], y[:4]), (x[4:], y[4:])])
    assert np.isfinite(eval_loss) and 0.0 <= acc <= 100.0
    assert model.training  # evaluate restores the mode


def test_float32_and_float64_models_agree():
    """The same seed gives the same network in both dtypes (weights cast from one host draw)."""
    m32, shape = make("resnet8", "float32")
    m64, _ = make("resnet8", "float64")
    for (n32, p32), (n64, p64) in zip(m32.named_parameters(), m64.named_parameters()):
        assert n32 == n64
        assert np.array_equal(p32.data, p64.data.astype(np.float32))
    x, y = batch(shape, "float64")
    l32 = m32.forward(x.astype(np.float32))
    l64 = m64.forward(x)
    err = np.linalg.norm(l32 - l64) / np.linalg.norm(l64)
    assert err < 1e-5


@pytest.mark.parametrize("kind", ["mlp", "resnet8"])
def test_mixed_dtypes_are_refused(kind):
    """A float64 input to a float32 model is an error, not a silent promotion."""
    model, shape = make(kind, "float32")
    x, _ = batch(shape, "float64")
    with pytest.raises((TypeError, ValueError), match="dtype|float"):
        model.forward(x)
