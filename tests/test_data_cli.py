"""``minigrad-pfa data list|get|verify|path``."""
import argparse
from pathlib import Path

import numpy as np
import pytest

from minigrad_pfa.cli_data import add_data_parser, main

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGRAD_PFA_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("MINIGRAD_PFA_OFFLINE", "1")


def test_hooks_into_a_parent_parser(capsys, tmp_path):
    parser = argparse.ArgumentParser(prog="minigrad-pfa")
    add_data_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "path", "mnist"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache" / "mnist")


def test_list(capsys, tmp_path):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "cache") in out
    for name in ("mnist", "fashion-mnist", "cifar10", "imagenet", "synthetic-mlp",
                 "synthetic-images"):
        assert f"  {name} " in out
    assert "SYNTHETIC" in out


def test_get_without_sources_fails_clearly(capsys, tmp_path):
    assert main(["data", "get", "cifar10", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minigrad-pfa data: error: ") and err.count("\n") == 1
    assert "cifar-10-binary.tar.gz" in err and "fix:" in err
    assert main(["data", "get", "imagenet"]) == 2
    assert "never downloads ImageNet" in capsys.readouterr().err
    assert main(["data", "path", "nosuch"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_verify_reports_missing_and_corrupt_files(capsys, tmp_path):
    assert main(["data", "verify", "mnist"]) == 1
    cap = capsys.readouterr()
    assert cap.out.count("FAIL") == 4 and "missing" in cap.out
    assert "minigrad-pfa data get mnist --force" in cap.err


@pytest.mark.skipif(not (DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed "
                           "(apt-get install -y dataset-fashion-mnist)")
def test_get_verify_and_repair_fashion_mnist(capsys, tmp_path):
    assert main(["data", "get", "fashion-mnist", "-q"]) == 0
    assert "fashion-mnist: ready" in capsys.readouterr().out
    assert main(["data", "verify", "fashion-mnist"]) == 0
    assert capsys.readouterr().out.count("ok  ") == 4
    cached = tmp_path / "cache" / "fashion-mnist" / "t10k-labels-idx1-ubyte"
    raw = bytearray(cached.read_bytes())
    raw[-1] ^= 1
    cached.write_bytes(bytes(raw))
    assert main(["data", "verify", "fashion-mnist"]) == 1
    assert "sha256" in capsys.readouterr().out
    assert main(["data", "get", "fashion-mnist", "--force", "-q"]) == 0
    capsys.readouterr()
    assert main(["data", "verify", "fashion-mnist"]) == 0
    aside = list(cached.parent.glob("t10k-labels-idx1-ubyte.bad-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(raw)  # moved, not deleted


def test_verify_imagefolder(capsys, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for split in ("train", "val"):
        d = tmp_path / "inet" / split / "n01"
        d.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "a.JPEG")
    assert main(["data", "verify", "imagenet", "--data-dir", str(tmp_path / "inet"), "-q"]) == 0
    (tmp_path / "inet" / "val" / "n01" / "b.JPEG").write_bytes(b"garbage")
    assert main(["data", "verify", "imagenet", "--data-dir", str(tmp_path / "inet"), "-q"]) == 1
    assert "b.JPEG: unreadable image" in capsys.readouterr().out
