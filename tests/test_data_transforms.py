"""Augmentations: exact geometry, determinism given the generator, and values against
PyTorch / Pillow / closed forms."""
import math
import random

import numpy as np
import pytest

from minigrad_pfa.data import transforms as T

Image = pytest.importorskip("PIL.Image")


def _coord_images(n, c, h, w):
    """uint8 images whose pixel (k, ch, i, j) encodes (i, j) and ch, never 0 (0 = padding)."""
    i = np.arange(h)[:, None]
    j = np.arange(w)[None, :]
    base = (1 + i * w + j).astype(np.int64)  # 1..h*w
    assert base.max() * c < 256
    x = np.stack([base * (ch + 1) for ch in range(c)])[None].repeat(n, axis=0)
    return x.astype(np.uint8)


def _is_channels_last(x):
    return x.transpose(0, 2, 3, 1).flags.c_contiguous


def test_random_crop_geometry_and_uniform_offsets():
    n, c, h, w, p = 3000, 2, 5, 6, 2
    x = _coord_images(n, c, h, w)
    out = T.RandomCrop((h, w), padding=p)(x, np.random.default_rng(0))
    assert out.shape == (n, c, h, w) and out.dtype == np.uint8 and _is_channels_last(out)
    padded = np.pad(x[0], ((0, 0), (p, p), (p, p)))  # independent zero padding
    windows = {(i, j): padded[:, i:i + h, j:j + w].tobytes()
               for i in range(2 * p + 1) for j in range(2 * p + 1)}
    lookup = {v: k for k, v in windows.items()}
    assert len(lookup) == len(windows)  # every offset gives a distinct window
    offsets = [lookup[o.tobytes()] for o in np.ascontiguousarray(out)]  # KeyError = wrong crop
    counts = np.zeros((2 * p + 1, 2 * p + 1))
    for i, j in offsets:
        counts[i, j] += 1
    expected = n / counts.size
    assert counts.min() > 0
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 60  # 24 degrees of freedom: p ~ 1e-4 for a correct uniform sampler


def test_random_crop_on_channels_last_input_and_no_padding():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(4, 3, 8, 8), dtype=np.uint8)
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    a = T.RandomCrop(5)(x, np.random.default_rng(7))
    b = T.RandomCrop(5)(x_cl, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    for k in range(4):  # each crop is a window of the unpadded image
        assert any(np.array_equal(a[k], x[k, :, i:i + 5, j:j + 5])
                   for i in range(4) for j in range(4))


def test_pad_matches_numpy():
    x = np.random.default_rng(2).integers(0, 256, size=(2, 3, 4, 5), dtype=np.uint8)
    out = T.Pad((1, 2))(x, None)
    np.testing.assert_array_equal(out, np.pad(x, ((0, 0), (0, 0), (1, 1), (2, 2))))
    assert _is_channels_last(out)


def test_flip_exact_and_probability():
    x = np.random.default_rng(3).integers(0, 256, size=(2000, 3, 4, 6), dtype=np.uint8)
    np.testing.assert_array_equal(T.RandomHorizontalFlip(1.0)(x, np.random.default_rng(0)),
                                  x[..., ::-1])
    np.testing.assert_array_equal(T.RandomHorizontalFlip(0.0)(x, np.random.default_rng(0)), x)
    out = T.RandomHorizontalFlip()(x, np.random.default_rng(0))
    same = np.all(out == x, axis=(1, 2, 3))
    mirrored = np.all(out == x[..., ::-1], axis=(1, 2, 3))
    assert np.all(same ^ mirrored)  # each image is one or the other (none symmetric here)
    assert 0.45 < mirrored.mean() < 0.55
    assert _is_channels_last(out)


@pytest.mark.parametrize("t", [T.RandomCrop(32, 4), T.RandomHorizontalFlip(),
                               T.RandomResizedCrop(16)])
def test_determinism_given_the_generator(t):
    x = np.random.default_rng(4).integers(0, 256, size=(16, 3, 32, 32), dtype=np.uint8)
    a = t(x, np.random.default_rng(123))
    b = t(x, np.random.default_rng(123))
    c = t(x, np.random.default_rng(124))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_random_resized_crop_params():
    t = T.RandomResizedCrop(8, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    n = 5000
    hs = np.full(n, 60)
    ws = np.full(n, 90)
    top, left, h, w = t.get_params(hs, ws, np.random.default_rng(0))
    assert np.all((top >= 0) & (left >= 0) & (top + h <= 60) & (left + w <= 90))
    assert np.all((h > 0) & (w > 0))
    # sizes are rounded from sqrt(s * area * r) and sqrt(s * area / r); undo the rounding
    # with a half-pixel margin on each side
    area = 60 * 90
    assert np.all((h + 0.5) * (w + 0.5) >= 0.08 * area)
    assert np.all((h - 0.5) * (w - 0.5) <= 1.0 * area)
    assert np.all((w + 0.5) / (h - 0.5) >= 3 / 4) and np.all((w - 0.5) / (h + 0.5) <= 4 / 3)
    # distribution: compare with a plain transcription of torchvision's per-image loop
    ref = np.array([_torchvision_rrc_params(60, 90, rnd) for rnd in
                    [random.Random(1)] for _ in range(n)])
    for ours, theirs in ((h * w / area, ref[:, 0] * ref[:, 1] / area),
                         (w / h, ref[:, 1] / ref[:, 0])):
        se = np.hypot(ours.std(), theirs.std()) / np.sqrt(n)
        assert abs(ours.mean() - theirs.mean()) < 5 * se


def _torchvision_rrc_params(height, width, rnd, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(h, w) of torchvision's RandomResizedCrop.get_params, one image at a time."""
    area = height * width
    for _ in range(10):
        target_area = area * rnd.uniform(*scale)
        aspect = math.exp(rnd.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def test_random_resized_crop_fallback_is_the_torchvision_central_crop():
    t = T.RandomResizedCrop(4, scale=(2.0, 3.0))  # never fits: always the fallback
    hs, ws = np.array([20, 100, 30]), np.array([100, 20, 30])
    top, left, h, w = t.get_params(hs, ws, np.random.default_rng(0))
    # wide 20x100: in_ratio 5 > 4/3 -> h = 20, w = round(20 * 4/3) = 27, centred
    # tall 100x20: in_ratio 0.2 < 3/4 -> w = 20, h = round(20 / (3/4)) = 27
    # square: whole image
    assert h.tolist() == [20, 27, 30] and w.tolist() == [27, 20, 30]
    assert top.tolist() == [0, (100 - 27) // 2, 0]
    assert left.tolist() == [(100 - 27) // 2, 0, 0]


def test_random_resized_crop_exact_geometry():
    x = np.random.default_rng(5).integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
    # area fraction 1/4, aspect 1: a 16x16 window resized to 16x16 (identity resampling)
    out = T.RandomResizedCrop(16, scale=(0.25, 0.25), ratio=(1.0, 1.0))(
        x, np.random.default_rng(9))
    assert out.shape == (6, 3, 16, 16) and _is_channels_last(out)
    for k in range(6):
        assert sum(np.array_equal(out[k], x[k, :, i:i + 16, j:j + 16])
                   for i in range(17) for j in range(17)) == 1
    # whole image, resized: Pillow's bilinear resize of the full image
    out = T.RandomResizedCrop((10, 12), scale=(1.0, 1.0), ratio=(1.0, 1.0))(
        x, np.random.default_rng(0))
    ref = np.asarray(Image.fromarray(x[0].transpose(1, 2, 0)).resize((12, 10), Image.BILINEAR))
    np.testing.assert_array_equal(out[0].transpose(1, 2, 0), ref)


def test_resize_shorter_side_and_center_crop_on_pil_lists():
    rng = np.random.default_rng(6)
    arrays = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
              for h, w in ((40, 60), (60, 40), (33, 50), (20, 20))]
    imgs = [Image.fromarray(a) for a in arrays]
    out = T.Resize(20)(imgs, None)
    # torchvision: shorter side -> 20, longer -> int(20 * long / short)
    assert [im.size[::-1] for im in out] == [(20, 30), (30, 20), (20, 30), (20, 20)]
    ref = imgs[0].resize((30, 20), Image.BILINEAR)
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(ref))
    assert out[3] is imgs[3]  # already the right size: untouched
    crop = T.CenterCrop((4, 6))(imgs[:1] + [Image.fromarray(arrays[1][:7, :9])], None)
    assert crop.shape == (2, 3, 4, 6) and _is_channels_last(crop)
    # offsets int(round((40-4)/2)) = 18, int(round((60-6)/2)) = 27; (7-4)/2 = 1.5 -> 2
    np.testing.assert_array_equal(crop[0].transpose(1, 2, 0), arrays[0][18:22, 27:33])
    np.testing.assert_array_equal(crop[1].transpose(1, 2, 0), arrays[1][2:6, 2:8])


def test_center_crop_on_arrays_and_too_small():
    x = _coord_images(2, 1, 6, 6)
    np.testing.assert_array_equal(T.CenterCrop(3)(x, None), x[:, :, 2:5, 2:5])  # 1.5 -> 2
    with pytest.raises(ValueError, match="smaller than the crop"):
        T.CenterCrop(7)(x, None)


def test_image_list_of_different_sizes_cannot_skip_the_crop():
    imgs = [Image.new("RGB", (5, 4)), Image.new("RGB", (6, 4))]
    with pytest.raises(ValueError, match="different sizes"):
        T.ToFloat()(imgs, None)


def test_to_float_and_normalize_match_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(7).integers(0, 256, size=(5, 3, 6, 7), dtype=np.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    y = T.Compose([T.ToFloat(), T.Normalize(mean, std)])(x, None)
    ref = torch.from_numpy(x).float().div(255)
    np.testing.assert_array_equal(T.ToFloat()(x, None), ref.numpy())
    ref = ref.sub(torch.tensor(mean).view(1, 3, 1, 1)).div(torch.tensor(std).view(1, 3, 1, 1))
    assert y.dtype == np.float32 and _is_channels_last(y)
    np.testing.assert_array_equal(y, ref.numpy())


def test_flatten_is_pytorch_order_for_any_layout():
    x = np.random.default_rng(8).random((3, 2, 4, 5)).astype(np.float32)
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    for a in (x, x_cl):
        np.testing.assert_array_equal(T.Flatten()(a, None), x.reshape(3, -1))
    flat = T.Compose([T.ToFloat(), T.Normalize((0.1307,), (0.3081,)), T.Flatten()])(
        (x * 255).astype(np.uint8), None)
    assert flat.shape == (3, 40) and flat.dtype == np.float32


def test_split_for_device():
    host, dev = T.cifar_train_transform().split_for_device()
    assert [type(t).__name__ for t in host.transforms] == ["RandomCrop", "RandomHorizontalFlip"]
    assert [type(t).__name__ for t in dev.transforms] == ["ToFloat", "Normalize"]
    host, dev = T.Compose([T.ToFloat(), T.RandomCrop(4)]).split_for_device()
    assert len(host.transforms) == 2 and not dev.transforms


def test_device_transforms_on_cupy(xp):
    if xp is np:
        pytest.skip("the NumPy path is covered above; this one needs a CUDA device")
    x = np.random.default_rng(9).integers(0, 256, size=(4, 3, 5, 5), dtype=np.uint8)
    tf = T.Compose([T.ToFloat(), T.Normalize((0.5, 0.4, 0.3), (0.2, 0.3, 0.4)), T.Flatten()])
    np.testing.assert_array_equal(xp.asnumpy(tf(xp.asarray(x), None)), tf(x, None))
