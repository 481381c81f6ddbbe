"""IDX / CIFAR readers on tiny files written here in the real formats (never downloaded)."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from fedpress.data import DatasetFormatError, get_scenario, read_cifar_batch, read_idx


def write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    """IDX by hand (independent of the reader): 0, 0, type 0x08, ndim, big-endian dims, data."""
    assert arr.dtype == np.uint8
    blob = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim)
    blob += b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)


def make_mnist(root, n_train=40, n_test=24, gz=False, seed=0, size=28):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / f"{split}-images-idx3-ubyte{suffix}", x, gz)
        write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", y, gz)
        out[split] = (x, y)
    return out


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("scenario", "subdir"),
    [("mnist", "MNIST/raw"), ("mnist", ""), ("fashion-mnist", "FashionMNIST/raw")],
)
def test_mnist_family_round_trips(tmp_path, gz, scenario, subdir):
    arrays = make_mnist(tmp_path / subdir if subdir else tmp_path, gz=gz)
    sc = get_scenario(scenario)
    d = sc.load(data_root=str(tmp_path))
    assert d.x_train.shape == (40, 1, 28, 28) and d.x_test.shape == (24, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    np.testing.assert_allclose(d.x_train[:, 0].numpy() * 255, arrays["train"][0], atol=1e-3)
    np.testing.assert_array_equal(d.y_test.numpy(), arrays["t10k"][1])
    assert d.groups is None and d.n_classes == 10
    torch.manual_seed(0)
    assert sc.build_model(d)(d.x_test[:3]).shape == (3, 10)


def test_data_root_from_environment(tmp_path, monkeypatch):
    make_mnist(tmp_path / "MNIST" / "raw", n_train=12, n_test=6)
    monkeypatch.setenv("FEDPRESS_DATA", str(tmp_path))
    assert get_scenario("mnist").load().n_train == 12


def test_read_idx_other_types_and_byte_order(tmp_path):
    arr = np.arange(-3, 9, dtype=">i2").reshape(3, 4)
    p = tmp_path / "x.idx"
    p.write_bytes(struct.pack(">BBBBII", 0, 0, 0x0B, 2, 3, 4) + arr.tobytes())
    out = read_idx(p)
    assert out.dtype == np.int16 and out.dtype.isnative
    np.testing.assert_array_equal(out, arr.astype(np.int16))


@pytest.mark.parametrize("gz", [False, True])
def test_corrupted_magic_is_rejected_clearly(tmp_path, gz):
    make_mnist(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    p = tmp_path / name
    raw = bytearray(gzip.decompress(p.read_bytes()) if gz else p.read_bytes())
    raw[2] = 0x42  # not an IDX type code
    p.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    with pytest.raises(DatasetFormatError, match=r"bad IDX magic number 0x00004203") as e:
        get_scenario("mnist").load(data_root=str(tmp_path))
    assert name in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[:-5], "file has"),  # truncated data
        (lambda b: b + b"\0", "file has"),  # trailing bytes
        (lambda b: b[:6], "truncated IDX header"),
        (lambda b: b[:4] + struct.pack(">I", 1 << 30) + b[8:], "imply|file has"),  # lying count
        (lambda b: b"\x1f\x8b" + b[2:], "corrupt gzip"),
    ],
)
def test_malformed_idx_is_rejected(tmp_path, mutate, match):
    p = tmp_path / "labels"
    write_idx(p, np.arange(10, dtype=np.uint8))
    p.write_bytes(mutate(p.read_bytes()))
    with pytest.raises(DatasetFormatError, match=match):
        read_idx(p)


def test_mismatched_counts_and_bad_labels(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(DatasetFormatError, match="24 images but 5 labels"):
        get_scenario("mnist").load(data_root=str(tmp_path))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(24, 10, np.uint8))
    with pytest.raises(DatasetFormatError, match="out of 0..9"):
        get_scenario("mnist").load(data_root=str(tmp_path))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_files_name_paths_and_how_to_get_them(tmp_path, name):
    with pytest.raises(FileNotFoundError) as e:
        get_scenario(name).load(data_root=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "never downloads" in msg and "download=True" in msg
    assert ("data_batch_1" if name == "cifar10" else "train-images-idx3-ubyte") in msg


def make_cifar(folder, n_per_batch=6, seed=0, bytes_keys=False, protocol=2):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        entry = {"batch_label": name, "data": data, "labels": labels}
        if bytes_keys:
            entry = {k.encode(): v for k, v in entry.items()}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=protocol))
        batches[name] = (data, labels)
    return batches


@pytest.mark.parametrize(("bytes_keys", "protocol"), [(False, 2), (True, pickle.HIGHEST_PROTOCOL)])
def test_cifar_round_trips(tmp_path, bytes_keys, protocol):
    batches = make_cifar(tmp_path / "cifar-10-batches-py", bytes_keys=bytes_keys, protocol=protocol)
    sc = get_scenario("cifar10")
    d = sc.load(data_root=str(tmp_path))
    assert d.x_train.shape == (30, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    data3, labels3 = batches["data_batch_3"]
    # Rows are channel-major: the first 1024 values are the red plane, row by row.
    red = d.x_train[12:18, 0].reshape(6, -1).numpy() * 255
    np.testing.assert_allclose(red, data3[:, :1024], atol=1e-3)
    assert d.y_train[12:18].tolist() == labels3
    assert d.y_test.tolist() == batches["test_batch"][1]
    torch.manual_seed(0)
    assert sc.build_model(d)(d.x_test[:2]).shape == (2, 10)


def test_cifar_batches_directly_in_root(tmp_path):
    make_cifar(tmp_path, n_per_batch=2)
    assert get_scenario("cifar10").load(data_root=str(tmp_path)).n_train == 10


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"not a pickle at all", "not a CIFAR-10 python batch"),
        (pickle.dumps({"data": _Evil(), "labels": []}), "refusing to load"),  # no code execution
        (pickle.dumps([1, 2, 3]), "expected a pickled dict"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}), "missing 'data'/'labels'"),
        (pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}), "3072"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}), "uint8"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}), "2 integers"),
        (pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [12]}), "out of range"),
    ],
)
def test_bad_cifar_batches_are_rejected(tmp_path, payload, match):
    p = tmp_path / "data_batch_1"
    p.write_bytes(payload)
    with pytest.raises(DatasetFormatError, match=match):
        read_cifar_batch(p)
