"""ImageNet-style folders on a generated tree of real JPEG files, with an unreadable file
and an empty class."""
import sys

import numpy as np
import pytest

from minigrad_pfa.data import DataLoader, imagenet_folder, load_dataset, verify_image_folder
from minigrad_pfa.data import transforms as T
from minigrad_pfa.data.errors import DataError, FormatError, MissingDataError
from minigrad_pfa.data.imagefolder import require_pillow

Image = pytest.importorskip("PIL.Image")

CLASSES = ["n01440764", "n01443537", "n01484850"]


def _make_tree(root, per_class=4, seed=0):
    """root/{train,val}/<wnid>/*.JPEG of assorted sizes (+ a PNG and a stray text file)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for k, c in enumerate(CLASSES):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
                a = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(a).save(d / f"{c}_{i}.JPEG", quality=90)
        Image.fromarray(np.zeros((30, 50), np.uint8), mode="L").save(
            root / split / CLASSES[0] / "gray.png")
        (root / split / CLASSES[0] / "notes.txt").write_text("not an image")
    return root


def test_scan_classes_labels_and_decoding(tmp_path):
    root = _make_tree(tmp_path)
    ds = imagenet_folder(root, "train")
    assert ds.classes == CLASSES and len(ds) == 3 * 4 + 1
    assert np.bincount(ds.labels).tolist() == [5, 4, 4]
    assert all(p.endswith((".JPEG", ".png")) for p in ds.paths)
    for i in (0, 4, 7):  # decoding equals Pillow's own RGB decode of the same file
        np.testing.assert_array_equal(np.asarray(ds.load_image(i)),
                                      np.asarray(Image.open(ds.paths[i]).convert("RGB")))
    gray = ds.paths.index(str(root / "train" / CLASSES[0] / "gray.png"))
    assert ds.load_image(gray).mode == "RGB"
    via_registry = load_dataset("imagenet", "val", data_dir=root)
    assert len(via_registry) == 13 and via_registry.meta["split"] == "val"


def test_loader_train_and_eval_pipelines(tmp_path):
    root = _make_tree(tmp_path)
    train = imagenet_folder(root, "train")
    tf = T.Compose([T.RandomResizedCrop(24), T.RandomHorizontalFlip(), T.ToFloat(),
                    T.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)])
    loader = DataLoader(train, 5, shuffle=True, seed=0, transform=tf, workers=2)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(5, 3, 24, 24)] * 2 + [(3, 3, 24, 24)]
    assert batches[0][0].dtype == np.float32
    again = list(DataLoader(train, 5, shuffle=True, seed=0, transform=tf, workers=1))
    for (x, y), (x2, y2) in zip(batches, again):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    ev = T.Compose([T.Resize(32), T.CenterCrop(28), T.ToFloat()])
    x, _ = next(iter(DataLoader(imagenet_folder(root, "val"), 13, transform=ev)))
    assert x.shape == (13, 3, 28, 28)
    # one image checked by hand: resize shorter side to 32, centre crop 28
    im = Image.open(imagenet_folder(root, "val").paths[0]).convert("RGB")
    w, h = im.size
    nw, nh = (32, int(32 * h / w)) if w <= h else (int(32 * w / h), 32)
    r = np.asarray(im.resize((nw, nh), Image.BILINEAR))
    i, j = int(round((nh - 28) / 2.0)), int(round((nw - 28) / 2.0))
    np.testing.assert_array_equal(np.rint(x[0] * 255).astype(np.uint8).transpose(1, 2, 0),
                                  r[i:i + 28, j:j + 28])


def test_unreadable_image_named_at_load_and_by_verify(tmp_path):
    root = _make_tree(tmp_path)
    bad = root / "train" / CLASSES[1] / "broken.JPEG"
    good = (root / "train" / CLASSES[1] / f"{CLASSES[1]}_0.JPEG").read_bytes()
    bad.write_bytes(good[:200])  # a truncated JPEG
    ds = imagenet_folder(root, "train")
    with pytest.raises(FormatError) as ei:
        list(DataLoader(ds, 4, transform=T.Compose([T.RandomResizedCrop(8)])))
    msg = str(ei.value)
    assert str(bad) in msg and "unreadable image" in msg
    assert "minigrad-pfa data verify imagenet --data-dir" in msg
    empty = root / "val" / "n09999999"
    empty.mkdir()
    rows = verify_image_folder(root, progress=False)
    problems = {p: d for p, ok, d in rows if not ok}
    assert str(bad) in problems and str(empty) in problems
    assert "empty class folder" in problems[str(empty)]
    assert bad.exists()  # nothing is deleted


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = _make_tree(tmp_path)
    empty = root / "train" / "n00000000"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(MissingDataError) as ei:
        imagenet_folder(root, "train")
    assert str(empty) in str(ei.value) and "empty class folder" in str(ei.value)
    with pytest.raises(MissingDataError, match="folder not found"):
        imagenet_folder(root, "test")
    with pytest.raises(MissingDataError, match="needs --data-dir"):
        load_dataset("imagenet", "train")


def test_missing_pillow_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError) as ei:
        require_pillow()
    assert "pip install 'minigrad_pfa[images]'" in str(ei.value)
