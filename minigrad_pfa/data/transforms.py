"""Batch transforms: augmentation and normalisation applied to a whole batch at once.

Notation: n images, c channels, (h, w) input size, (th, tw) output size, (ph, pw) padding.

A transform is called as ``t(x, rng)`` where ``x`` is either

* an array (n, c, h, w) -- uint8 bytes before :class:`ToFloat`, float32 after -- or
  (n, features) after :class:`Flatten`, or
* a list of n RGB PIL images of different sizes (straight from an image folder); the
  geometric transforms (:class:`RandomResizedCrop`, :class:`Resize`, :class:`CenterCrop`)
  accept it and the first crop to a fixed size turns it into an array;

and ``rng`` is a ``numpy.random.Generator``. Random transforms draw all the parameters of
the batch with a few vectorised calls (no per-sample generator calls), so the result is a
pure function of (``x``, the state of ``rng``); the loader gives every batch its own
generator derived from (seed, epoch, batch index).

Semantics follow torchvision's PIL path, which the published experiments used:

* :class:`RandomCrop` ``(size, padding)``: zero-pad every side by ``padding``, then take a
  ``size`` window at a uniformly drawn offset ``(i, j)``, ``0 <= i <= h + 2 ph - th``;
* :class:`RandomHorizontalFlip`: mirror the width axis with probability ``p``;
* :class:`RandomResizedCrop`: area fraction ``s ~ U(scale)``, log aspect
  ``log r ~ U(log ratio)``, ``cw = round(sqrt(s h w r))``, ``ch = round(sqrt(s h w / r))``,
  first of 10 draws that fits, else the central crop of clamped aspect; offset uniform;
  crop, then bilinear resize to ``size`` (Pillow, antialiased, as torchvision does);
* :class:`Resize` ``(s)``: shorter side to ``s``, longer side ``int(s * long / short)``;
* :class:`CenterCrop`: offset ``int(round((h - th) / 2))``, same for w;
* :class:`ToFloat`: ``x / 255`` in float32; :class:`Normalize`: ``(x - mean_c) / std_c``.

Geometric transforms work on the bytes (before ToFloat): 4x less memory traffic, and
padding with byte 0 is what torchvision does (PIL pads before ``ToTensor``). 4-D outputs
are channels-last in memory (the engine's layout). ``ToFloat``, ``Normalize`` and
``Flatten`` use only ``xp`` operations present in CuPy, so the loader can apply them on the
GPU after sending the 4x smaller uint8 batch (see :meth:`Compose.split_for_device`).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _is_list(x) -> bool:
    return isinstance(x, (list, tuple))


def _nhwc(x):
    """The (n, h, w, c) view of an (n, c, h, w) array (contiguous when channels-last)."""
    return x.transpose(0, 2, 3, 1)


def _nchw(x):
    return x.transpose(0, 3, 1, 2)


def _pil_to_hwc(img) -> np.ndarray:
    a = np.asarray(img)
    return a[:, :, None] if a.ndim == 2 else a


def as_array(x):
    """An image list -> uint8 array (n, c, h, w) (channels-last); arrays pass through."""
    if not _is_list(x):
        return x
    if len(x) == 0:
        raise ValueError("empty batch")
    arrs = [_pil_to_hwc(im) for im in x]
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1:
        raise ValueError(f"images of different sizes {sorted(shapes)[:3]}... cannot form one "
                         "batch: put RandomResizedCrop or Resize + CenterCrop first")
    return _nchw(np.stack(arrs))


def _to_pil_list(x):
    """Array (n, c, h, w) uint8 -> list of PIL images (for Pillow resampling)."""
    from .imagefolder import require_pillow
    Image = require_pillow()
    if _is_list(x):
        return list(x)
    if x.dtype != np.uint8 or x.shape[1] not in (1, 3):
        raise ValueError(f"resampling needs uint8 images with 1 or 3 channels (before "
                         f"ToFloat), got {x.dtype} {tuple(x.shape)}")
    h = np.asarray(_nhwc(x))
    if h.shape[3] == 1:
        return [Image.fromarray(np.ascontiguousarray(im[:, :, 0]), mode="L") for im in h]
    return [Image.fromarray(np.ascontiguousarray(im), mode="RGB") for im in h]


def _sizes(x):
    """Per-image heights and widths (int64 arrays)."""
    if _is_list(x):
        return (np.array([im.size[1] for im in x], dtype=np.int64),
                np.array([im.size[0] for im in x], dtype=np.int64))
    n, _, h, w = x.shape
    return np.full(n, h, dtype=np.int64), np.full(n, w, dtype=np.int64)


class Transform:
    """Base class. ``random``: draws from the rng; ``device_ok``: may run on the device."""
    random = False
    device_ok = False

    def __call__(self, x, rng: np.random.Generator):
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order, passing the same generator along."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    @property
    def random(self):
        return any(getattr(t, "random", True) for t in self.transforms)

    def __call__(self, x, rng):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def split_for_device(self):
        """``(host, device)``: the longest tail of device-capable transforms goes to ``device``.

        The loader runs ``host`` on the CPU, sends the (usually uint8) result to the device,
        then runs ``device`` there; both are Compose objects (possibly empty).
        """
        k = len(self.transforms)
        while k > 0 and getattr(self.transforms[k - 1], "device_ok", False):
            k -= 1
        return Compose(self.transforms[:k]), Compose(self.transforms[k:])


class Pad(Transform):
    """Constant padding of the spatial borders: (n, c, h, w) -> (n, c, h + 2 ph, w + 2 pw)."""

    def __init__(self, padding, fill: int = 0):
        self.padding = _pair(padding, "padding")
        self.fill = fill

    def __call__(self, x, rng=None):
        x = as_array(x)
        n, c, h, w = x.shape
        ph, pw = self.padding
        out = np.full((n, h + 2 * ph, w + 2 * pw, c), self.fill, dtype=x.dtype)
        out[:, ph:ph + h, pw:pw + w] = _nhwc(x)
        return _nchw(out)


class RandomCrop(Transform):
    """Zero-pad by ``padding`` then crop ``size`` at a uniform random offset (per image).

    For image ``k`` with offsets ``(i_k, j_k)`` drawn from ``U{0..h+2ph-th}`` x
    ``U{0..w+2pw-tw}``: ``out[k] = pad(x[k])[:, i_k:i_k+th, j_k:j_k+tw]``.
    """
    random = True

    def __init__(self, size, padding=0, fill: int = 0):
        self.size = _pair(size, "size")
        self.padding = _pair(padding, "padding")
        self.fill = fill

    def __call__(self, x, rng):
        x = as_array(x)
        n, c, h, w = x.shape
        th, tw = self.size
        ph, pw = self.padding
        hp, wp = h + 2 * ph, w + 2 * pw
        if hp < th or wp < tw:
            raise ValueError(f"RandomCrop{self.size}: padded image {hp}x{wp} is smaller "
                             "than the crop")
        src = Pad(self.padding, self.fill)(x) if (ph or pw) else x
        pad = np.ascontiguousarray(_nhwc(src))                          # (n, hp, wp, c)
        oi = rng.integers(0, hp - th + 1, size=n)
        oj = rng.integers(0, wp - tw + 1, size=n)
        # win[k, r, j] is the run of tw pixels of row r of image k starting at column j:
        # a read-only strided view, so the gather below copies whole (tw, c) runs
        # (96 bytes for CIFAR) instead of single 3-byte pixels.
        s0, s1, s2, s3 = pad.strides
        win = np.lib.stride_tricks.as_strided(pad, (n, hp, wp - tw + 1, tw, c),
                                              (s0, s1, s2, s2, s3), writeable=False)
        rows = oi[:, None] + np.arange(th)                              # (n, th)
        out = win[np.arange(n)[:, None], rows, oj[:, None]]             # (n, th, tw, c)
        return _nchw(out)


class RandomHorizontalFlip(Transform):
    """Mirror the width axis of each image with probability ``p`` (one draw per image)."""
    random = True

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, x, rng):
        x = as_array(x)
        n, c, h, w = x.shape
        flip = rng.random(n) < self.p
        # View each pixel's c bytes as one opaque item, so mirroring moves whole pixels
        # (a loop over 3-byte items is slow, a loop of length 3 slower still).
        src = np.ascontiguousarray(_nhwc(x))
        pix = src.view(np.dtype((np.void, c * src.itemsize)))[..., 0]   # (n, h, w)
        out = pix.copy()
        out[flip] = pix[flip, :, ::-1]
        return _nchw(out.view(x.dtype).reshape(n, h, w, c))


class RandomResizedCrop(Transform):
    """torchvision's RandomResizedCrop, parameters drawn for the whole batch at once."""
    random = True
    attempts = 10

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
        self.size = _pair(size, "size")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def get_params(self, heights, widths, rng):
        """Crop boxes ``(top, left, h, w)``, int64 arrays (n,), for images of the given sizes.

        Vectorised form of torchvision's rule: 10 candidate (area fraction, aspect) draws per
        image, the first that fits wins; images with none fall back to the central crop with
        the aspect clamped to ``ratio``.
        """
        n = heights.shape[0]
        area = (heights * widths).astype(np.float64)
        s = rng.uniform(self.scale[0], self.scale[1], size=(n, self.attempts))
        log_r = rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]),
                            size=(n, self.attempts))
        r = np.exp(log_r)
        target = area[:, None] * s
        cw = np.rint(np.sqrt(target * r)).astype(np.int64)  # rint = Python's round (half-even)
        ch = np.rint(np.sqrt(target / r)).astype(np.int64)
        fits = (cw > 0) & (cw <= widths[:, None]) & (ch > 0) & (ch <= heights[:, None])
        first = np.argmax(fits, axis=1)
        found = fits[np.arange(n), first]
        w = cw[np.arange(n), first]
        h = ch[np.arange(n), first]
        # fallback: whole image, aspect clamped to [ratio0, ratio1], centred
        in_ratio = widths / heights
        fw = np.where(in_ratio < self.ratio[0], widths,
                      np.where(in_ratio > self.ratio[1],
                               np.rint(heights * self.ratio[1]).astype(np.int64), widths))
        fh = np.where(in_ratio < self.ratio[0],
                      np.rint(widths / self.ratio[0]).astype(np.int64), heights)
        w = np.where(found, w, fw)
        h = np.where(found, h, fh)
        top = rng.integers(0, heights - h + 1)
        left = rng.integers(0, widths - w + 1)
        top = np.where(found, top, (heights - h) // 2)
        left = np.where(found, left, (widths - w) // 2)
        return top, left, h, w

    def __call__(self, x, rng):
        from .imagefolder import require_pillow
        Image = require_pillow()
        heights, widths = _sizes(x)
        top, left, h, w = self.get_params(heights, widths, rng)
        th, tw = self.size
        imgs = _to_pil_list(x)
        c = 3 if imgs[0].mode == "RGB" else 1
        out = np.empty((len(imgs), th, tw, c), dtype=np.uint8)
        for k, im in enumerate(imgs):  # per image: Pillow's C code does the resampling
            box = (int(left[k]), int(top[k]), int(left[k] + w[k]), int(top[k] + h[k]))
            out[k] = _pil_to_hwc(im.crop(box).resize((tw, th), Image.BILINEAR))
        return _nchw(out)


class Resize(Transform):
    """Bilinear resize (Pillow): an int sets the shorter side, a pair (h, w) the exact size."""

    def __init__(self, size):
        self.size = size if isinstance(size, int) else _pair(size, "size")

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(new_h, new_w) following torchvision: the longer side is ``int(s * long / short)``."""
        if not isinstance(self.size, int):
            return self.size
        s = self.size
        if w <= h:
            return int(s * h / w), s
        return s, int(s * w / h)

    def __call__(self, x, rng=None):
        from .imagefolder import require_pillow
        Image = require_pillow()
        was_list = _is_list(x)
        out = []
        for im in _to_pil_list(x):
            nh, nw = self.output_size(im.size[1], im.size[0])
            out.append(im if (nh, nw) == (im.size[1], im.size[0])
                       else im.resize((nw, nh), Image.BILINEAR))
        return out if was_list else as_array(out)


class CenterCrop(Transform):
    """Crop ``size`` from the centre: offset ``int(round((h - th) / 2))`` (and for w)."""

    def __init__(self, size):
        self.size = _pair(size, "size")

    def _offset(self, h: int, w: int) -> tuple[int, int]:
        th, tw = self.size
        if h < th or w < tw:
            raise ValueError(f"CenterCrop{self.size}: image {h}x{w} is smaller than the "
                             "crop; put a Resize before it")
        return int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))

    def __call__(self, x, rng=None):
        th, tw = self.size
        if _is_list(x):
            out = np.empty((len(x), th, tw, 3 if x[0].mode == "RGB" else 1), dtype=np.uint8)
            for k, im in enumerate(x):
                a = _pil_to_hwc(im)
                i, j = self._offset(a.shape[0], a.shape[1])
                out[k] = a[i:i + th, j:j + tw]
            return _nchw(out)
        i, j = self._offset(x.shape[2], x.shape[3])
        return _nchw(np.ascontiguousarray(_nhwc(x)[:, i:i + th, j:j + tw]))


class ToFloat(Transform):
    """Bytes to float32 in [0, 1]: ``y = x / 255`` (exactly torchvision's ``ToTensor`` value).

    4-D output is channels-last in memory. Works on NumPy and CuPy arrays.
    """
    device_ok = True

    def __call__(self, x, rng=None):
        x = as_array(x)
        xp = get_array_module(x)
        if x.ndim == 4:
            n, c, h, w = x.shape
            out = xp.empty((n, h, w, c), dtype=xp.float32)
            # uint8 / float32 scalar divides in float32 (NEP 50): exactly ``float(x) / 255``
            xp.divide(_nhwc(x), np.float32(255.0), out=out)
            return _nchw(out)
        out = xp.empty(x.shape, dtype=xp.float32)
        xp.divide(x, np.float32(255.0), out=out)
        return out


class Normalize(Transform):
    """Per-channel ``y[:, k] = (x[:, k] - mean[k]) / std[k]`` in the input's float dtype.

    For (n, d) inputs (flattened single-channel images) one mean/std applies to all
    features. Works on NumPy and CuPy arrays; preserves the memory layout.
    """
    device_ok = True

    def __init__(self, mean, std):
        self.mean = tuple(float(m) for m in np.atleast_1d(mean))
        self.std = tuple(float(s) for s in np.atleast_1d(std))
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std need the same number of channels")

    def _constants(self, xp, dtype):
        """mean and std as arrays of ``xp`` (made once per array module and dtype: on a GPU
        a host->device copy per batch would wait for the device's queue every step)."""
        cache = self.__dict__.setdefault("_arrays", {})
        key = (xp.__name__, np.dtype(dtype).name)
        if key not in cache:
            cache[key] = (xp.asarray(self.mean, dtype=dtype), xp.asarray(self.std, dtype=dtype))
        return cache[key]

    def __call__(self, x, rng=None):
        xp = get_array_module(x)
        if x.dtype not in (np.float32, np.float64):
            raise ValueError(f"Normalize expects float input (put ToFloat first), got {x.dtype}")
        c = x.shape[1] if x.ndim == 4 else 1
        if len(self.mean) not in (1, c):
            raise ValueError(f"Normalize has {len(self.mean)} channel means but the input "
                             f"has {c} channels")
        shape = (1, len(self.mean), 1, 1) if x.ndim == 4 else (1, 1)
        if x.ndim != 4 and len(self.mean) != 1:
            raise ValueError("Normalize on (n, features) input takes one mean and one std")
        m, s = self._constants(xp, x.dtype)
        if x.ndim == 4 and _nhwc(x).flags.c_contiguous and len(self.mean) == c:
            # channels-last: rows of w*c values with the channel pattern repeated w times;
            # a tiled (w*c,) mean/std broadcasts with long inner loops (a (1, c, 1, 1)
            # operand makes NumPy loop over runs of c = 3 values, ~15x slower)
            n, _, h, w = x.shape
            out = xp.empty((n, h, w, c), dtype=x.dtype)
            rows, orows = _nhwc(x).reshape(n * h, w * c), out.reshape(n * h, w * c)
            xp.subtract(rows, xp.tile(m, w), out=orows)
            xp.divide(orows, xp.tile(s, w), out=orows)
            return _nchw(out)
        out = xp.empty_like(x)
        xp.subtract(x, m.reshape(shape), out=out)
        xp.divide(out, s.reshape(shape), out=out)
        return out


class Flatten(Transform):
    """(n, c, h, w) -> (n, c*h*w) in PyTorch's (c, h, w) order, whatever the memory layout."""
    device_ok = True

    def __call__(self, x, rng=None):
        xp = get_array_module(x)
        return xp.ascontiguousarray(x).reshape(x.shape[0], -1)


# ------------------------------------------------------------------- standard pipelines

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def cifar_train_transform(mean=CIFAR10_MEAN, std=CIFAR10_STD) -> Compose:
    """E2 training: random crop 32 (padding 4), horizontal flip, bytes/255, normalise."""
    return Compose([RandomCrop(32, 4), RandomHorizontalFlip(), ToFloat(), Normalize(mean, std)])


def eval_transform(mean, std, flatten: bool = False) -> Compose:
    """No augmentation: bytes/255 and normalise (+ flatten for MLPs)."""
    return Compose([ToFloat(), Normalize(mean, std)] + ([Flatten()] if flatten else []))


def imagenet_train_transform() -> Compose:
    """E3 training: random-resized crop 224, flip, bytes/255, normalise."""
    return Compose([RandomResizedCrop(224), RandomHorizontalFlip(), ToFloat(),
                    Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def imagenet_eval_transform() -> Compose:
    """E3 evaluation: resize 256, centre crop 224, bytes/255, normalise."""
    return Compose([Resize(256), CenterCrop(224), ToFloat(),
                    Normalize(IMAGENET_MEAN, IMAGENET_STD)])
