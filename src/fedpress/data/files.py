"""Readers for MNIST / Fashion-MNIST (IDX) and CIFAR-10 (python pickles) without torchvision.

fedpress never downloads: point ``data_root`` at files you already have (for example the folder
you gave ``torchvision.datasets.MNIST(root, download=True)``). Both formats are parsed with
validation — magic numbers, dimensions, lengths, label ranges — so a truncated or wrong file
fails with a :class:`DatasetFormatError` that names the file, not with a reshape error later.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import zlib
from pathlib import Path

import numpy as np

from fedpress.data.base import ScenarioData, to_data

__all__ = [
    "CIFAR10_CLASSES",
    "DatasetFormatError",
    "default_data_root",
    "load_cifar10",
    "load_fashion_mnist",
    "load_mnist",
    "read_cifar_batch",
    "read_idx",
]

DATA_ROOT_ENV = "FEDPRESS_DATA"

# IDX type codes (third magic byte) → big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Far above any real IDX file (MNIST train images are 47 MB) but small enough that a corrupt
# header claiming huge dimensions is rejected before anything is allocated.
_MAX_IDX_BYTES = 1 << 31

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class DatasetFormatError(ValueError):
    """A dataset file exists but is not in the expected format (bad magic, shape, length)."""


def default_data_root() -> str:
    """Where file-backed scenarios look when ``data_root`` is None: ``$FEDPRESS_DATA`` or ``data``.

    ``data`` matches the ``root="data"`` that torchvision examples use.

    >>> isinstance(default_data_root(), str)
    True
    """
    return os.environ.get(DATA_ROOT_ENV) or "data"


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    # Detect gzip by content, not by name: people gunzip files and keep the name, or vice versa.
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            raise DatasetFormatError(f"{path}: corrupt gzip stream ({e})") from e
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a native-endian numpy array.

    Header: two zero bytes, a type code (0x08 = uint8 ... 0x0E = float64), the number of
    dimensions, then each dimension as a big-endian uint32; the data follows, row-major.

    >>> import tempfile, struct
    >>> p = Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
    >>> _ = p.write_bytes(struct.pack(">IIBBB", 0x801, 3, 7, 0, 9))
    >>> read_idx(p)
    array([7, 0, 9], dtype=uint8)
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetFormatError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 or zero1 or code not in _IDX_DTYPES or ndim == 0:
        raise DatasetFormatError(
            f"{path}: bad IDX magic number 0x{int.from_bytes(raw[:4], 'big'):08X} "
            "(expected 0x0000TTNN: type code TT in 08..0E, NN >= 1 dimensions; "
            "e.g. 0x00000803 for images, 0x00000801 for labels)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=object)) * dtype.itemsize
    if expected > _MAX_IDX_BYTES:
        raise DatasetFormatError(f"{path}: IDX dimensions {dims} imply {expected} bytes")
    if len(raw) - header != expected:
        raise DatasetFormatError(
            f"{path}: IDX header says {dims} x {dtype.itemsize} B = {expected} data bytes, "
            f"file has {len(raw) - header}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MNIST_INFO = {
    # name: (torchvision folder, where to get it)
    "mnist": (
        "MNIST",
        "torchvision.datasets.MNIST(root, download=True) on a machine with network access, or "
        "the files from https://ossci-datasets.s3.amazonaws.com/mnist/ "
        "(mirror of http://yann.lecun.com/exdb/mnist/)",
    ),
    "fashion-mnist": (
        "FashionMNIST",
        "torchvision.datasets.FashionMNIST(root, download=True) on a machine with network "
        "access, or the files from https://github.com/zalandoresearch/fashion-mnist "
        "(http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/)",
    ),
}


def _find_idx(root: Path, folder: str, stem: str) -> Path | None:
    for d in (root / folder / "raw", root / folder, root):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _load_idx_dataset(which: str, data_root: str | None) -> ScenarioData:
    folder, how = _MNIST_INFO[which]
    root = Path(data_root if data_root is not None else default_data_root()).expanduser()
    paths = {k: _find_idx(root, folder, stem) for k, stem in _MNIST_FILES.items()}
    missing = [k for k, p in paths.items() if p is None]
    if missing:
        looked = ", ".join(str(d) for d in (root / folder / "raw", root / folder, root))
        names = ", ".join(f"{_MNIST_FILES[k]}[.gz]" for k in missing)
        raise FileNotFoundError(
            f"{which}: missing {names}; looked in {looked}. fedpress never downloads: get the "
            f"four IDX files via {how}, and pass that root as data_root "
            f"(or set ${DATA_ROOT_ENV})."
        )
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DatasetFormatError(f"{paths[f'{split}_images']}: expected uint8 (N, H, W) images")
        if y.ndim != 1 or y.dtype != np.uint8:
            raise DatasetFormatError(f"{paths[f'{split}_labels']}: expected uint8 (N,) labels")
        if len(x) != len(y):
            raise DatasetFormatError(f"{which} {split}: {len(x)} images but {len(y)} labels")
        if y.size and y.max() >= 10:
            raise DatasetFormatError(f"{paths[f'{split}_labels']}: label {y.max()} out of 0..9")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DatasetFormatError(f"{which}: train and test images differ in size")
    return to_data(
        arrays["train_images"][:, None] / np.float32(255),
        arrays["train_labels"],
        arrays["test_images"][:, None] / np.float32(255),
        arrays["test_labels"],
        n_classes=10,
        description=f"{which} from {paths['train_images'].parent} (official train/test split)",
    )


def load_mnist(seed: int = 0, data_root: str | None = None) -> ScenarioData:
    """MNIST from IDX files under ``data_root`` as ``(N, 1, 28, 28)`` floats in [0, 1].

    Looks in ``<root>/MNIST/raw`` (torchvision's layout), ``<root>/MNIST`` and ``<root>``, for
    plain or ``.gz`` files. The official split is used, so ``seed`` has no effect.

    >>> load_mnist(data_root="/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: mnist: missing train-images-idx3-ubyte[.gz], ...
    """
    return _load_idx_dataset("mnist", data_root)


def load_fashion_mnist(seed: int = 0, data_root: str | None = None) -> ScenarioData:
    """Fashion-MNIST from IDX files (``<root>/FashionMNIST/raw`` or ``<root>``); see
    :func:`load_mnist`.

    >>> load_fashion_mnist(data_root="/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: fashion-mnist: missing ...
    """
    return _load_idx_dataset("fashion-mnist", data_root)


# ---------------------------------------------------------------------------------------- cifar


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else.

    Plain ``pickle.load`` runs arbitrary code from the file; CIFAR batches only ever need numpy's
    array reconstruction, so everything else is refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Python 3 writes bytes at protocol <= 2 as _codecs.encode(text, "latin1"); harmless.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        # numpy 2 renamed numpy.core to numpy._core; files written by either numpy (and the
        # original Python 2 files) name one or the other, so resolve whichever exists here.
        if module.startswith("numpy.core.") or module.startswith("numpy._core."):
            suffix = module.split(".", 2)[2]
            for base in ("numpy._core", "numpy.core"):
                try:
                    return super().find_class(f"{base}.{suffix}", name)
                except (ImportError, AttributeError):
                    continue
        return super().find_class(module, name)


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch → ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    The file is a pickled dict with ``data`` (N × 3072 uint8, channel-major rows) and ``labels``
    (the original files are Python 2 pickles, hence ``encoding="latin1"``).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "data_batch_1"
    >>> batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [3, 5]}
    >>> _ = p.write_bytes(pickle.dumps(batch, protocol=2))
    >>> x, y = read_cifar_batch(p)
    >>> x.shape, y.tolist()
    ((2, 3, 32, 32), [3, 5])
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # any unpickling failure means "not a CIFAR batch"
        raise DatasetFormatError(f"{path}: not a CIFAR-10 python batch ({e})") from e
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise DatasetFormatError(f"{path}: missing 'data'/'labels' (keys: {sorted(obj)})")
    data, labels = obj["data"], np.asarray(obj["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetFormatError(f"{path}: 'data' must be a uint8 (N, 3072) array")
    if data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(f"{path}: rows have {data.shape[1]} values, expected 3072")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetFormatError(f"{path}: 'labels' must be {len(data)} integers")
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise DatasetFormatError(f"{path}: labels out of range 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


def load_cifar10(seed: int = 0, data_root: str | None = None) -> ScenarioData:
    """CIFAR-10 from ``<root>/cifar-10-batches-py/`` (or ``<root>`` itself) as (N, 3, 32, 32).

    Pixels are scaled to [0, 1]; the official 50k/10k split is used, so ``seed`` has no effect.

    >>> load_cifar10(data_root="/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: cifar10: missing ...
    """
    root = Path(data_root if data_root is not None else default_data_root()).expanduser()
    candidates = (root / _CIFAR_DIR, root)
    names = (*_CIFAR_TRAIN, _CIFAR_TEST)
    folder = next((d for d in candidates if all((d / n).is_file() for n in names)), None)
    if folder is None:
        raise FileNotFoundError(
            f"cifar10: missing {', '.join(names)} in {candidates[0]} (or {candidates[1]}). "
            "fedpress never downloads: use torchvision.datasets.CIFAR10(root, download=True) on "
            "a machine with network access, or extract "
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into that root, and pass "
            f"the root as data_root (or set ${DATA_ROOT_ENV})."
        )
    train = [read_cifar_batch(folder / n) for n in _CIFAR_TRAIN]
    x_te, y_te = read_cifar_batch(folder / _CIFAR_TEST)
    return to_data(
        np.concatenate([x for x, _ in train]) / np.float32(255),
        np.concatenate([y for _, y in train]),
        x_te / np.float32(255),
        y_te,
        n_classes=10,
        description=f"CIFAR-10 from {folder} (official train/test split)",
    )
