"""LEAF benchmark datasets (FEMNIST, Shakespeare) with their natural per-writer / per-role clients.

LEAF (Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings") ships scripts, not data:
its ``preprocess.sh`` downloads the raw corpora and writes JSON shards

    <root>/femnist/data/train/*.json      <root>/femnist/data/test/*.json
    <root>/shakespeare/data/train/*.json  <root>/shakespeare/data/test/*.json

each ``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}``.
fedpress never downloads; it reads those shards, checks them (a bad one is a
:class:`~fedpress.data.files.DatasetFormatError` naming the file and the user) and keeps LEAF's
*natural* partition: one fedpress client per LEAF user (an EMNIST writer, a Shakespeare speaking
role), which is the whole point of the benchmark — real, not simulated, non-IID data.

- FEMNIST: ``x`` is 784 floats in [0, 1] (a 28×28 image, row-major; LEAF keeps the scan's
  polarity, so the background is 1.0 and strokes are dark), ``y`` a class in 0..61 (digits,
  upper case, lower case). Loaded as ``(N, 1, 28, 28)`` float32.
- Shakespeare: ``x`` is an 80-character string, ``y`` the next character; both are mapped to
  indices into LEAF's 80-symbol vocabulary :data:`SHAKESPEARE_VOCAB`. Loaded as ``(N, 80)``
  float32 *indices* (ScenarioData stores every input as float32; integers below 2**24 are exact,
  and the ``char_rnn`` model casts them back to ``long`` for its embedding).

Memory: full FEMNIST is ~3,500 writers and ~800k images, 2.5 GB as float32. ``max_clients`` keeps
only N users (the first N user ids in sorted order, or a seeded random sample); users beyond that
are structure-checked but never converted, and shards are parsed one at a time, so the peak is
one parsed shard plus the kept arrays. LEAF's own ``--sf`` fraction makes smaller files too.

>>> import tempfile, numpy as np
>>> root = Path(tempfile.mkdtemp())
>>> rng = np.random.default_rng(0)
>>> def writer(n):  # n random 28x28 images, labels in 0..61
...     return rng.random((n, 784)), rng.integers(0, 62, n)
>>> _ = write_leaf_json(root / "femnist/data/train/part_0.json", {"w1": writer(5), "w0": writer(3)})
>>> _ = write_leaf_json(root / "femnist/data/test/part_0.json", {"w1": writer(2), "w0": writer(1)})
>>> d = load_femnist(data_root=root)
>>> d.input_shape, d.n_train, d.n_test, d.n_classes
((1, 28, 28), 8, 3, 62)
>>> np.bincount(d.groups).tolist()  # client 0 = user "w0" (3 samples), client 1 = "w1" (5)
[3, 5]
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedpress.data.base import ScenarioData, to_data
from fedpress.data.files import DATA_ROOT_ENV, DatasetFormatError, default_data_root

__all__ = [
    "FEMNIST_CLASSES",
    "LEAF_DATASETS",
    "SHAKESPEARE_SEQ_LEN",
    "SHAKESPEARE_VOCAB",
    "LeafFilesNotFound",
    "LeafSplit",
    "load_femnist",
    "load_leaf",
    "load_shakespeare",
    "read_leaf_split",
    "write_leaf_json",
]

# LEAF's ALL_LETTERS (models/utils/language_utils.py): index i of a character is its class id, so
# results stay comparable with LEAF's reference models. 80 distinct symbols.
SHAKESPEARE_VOCAB = (
    "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
)
SHAKESPEARE_SEQ_LEN = 80
FEMNIST_CLASSES = 62
_FEMNIST_PIXELS = 28 * 28

# Byte → vocabulary index (-1: not in the vocabulary). All 80 symbols are ASCII, so a string that
# encodes as latin-1 can be mapped with one vectorised lookup instead of a dict call per character.
_CHAR_LUT = np.full(256, -1, dtype=np.int16)
_CHAR_LUT[np.frombuffer(SHAKESPEARE_VOCAB.encode("ascii"), np.uint8)] = np.arange(
    len(SHAKESPEARE_VOCAB)
)


class LeafFilesNotFound(DatasetFormatError, FileNotFoundError):
    """LEAF's JSON shards are not where they were looked for.

    Both a :class:`DatasetFormatError` and a :class:`FileNotFoundError`: callers that handle a
    missing MNIST/CIFAR file (``FileNotFoundError``) handle this one the same way.
    """


# ------------------------------------------------------------------------------ per-dataset parsing


def _femnist_arrays(path: Path, user: str, xs: list, ys: list) -> tuple[np.ndarray, np.ndarray]:
    n = len(xs)
    try:
        x = np.asarray(xs, dtype=np.float32)
    except (ValueError, TypeError):
        # Ragged rows or non-numbers; find the first bad one so the message can point at it.
        for i, row in enumerate(xs):
            if not isinstance(row, list) or len(row) != _FEMNIST_PIXELS:
                got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
                raise DatasetFormatError(
                    f"{path}: user {user!r} sample {i}: x must be {_FEMNIST_PIXELS} floats "
                    f"(a flattened 28x28 image), got {got}"
                ) from None
        raise DatasetFormatError(f"{path}: user {user!r}: x holds non-numeric values") from None
    if n == 0:
        x = x.reshape(0, _FEMNIST_PIXELS)
    if x.shape != (n, _FEMNIST_PIXELS):
        raise DatasetFormatError(
            f"{path}: user {user!r}: x must be {n} rows of {_FEMNIST_PIXELS} floats "
            f"(flattened 28x28 images), got shape {x.shape}"
        )
    # LEAF writes pixel/255; anything outside [0, 1] (or NaN) is a different encoding, e.g. 0..255.
    if n and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise DatasetFormatError(
            f"{path}: user {user!r}: pixel values must be finite and in [0, 1] "
            f"(LEAF stores pixel/255), got range [{np.nanmin(x)}, {np.nanmax(x)}]"
        )
    y = np.asarray(ys)
    if n and (y.ndim != 1 or y.dtype.kind not in "iu"):
        raise DatasetFormatError(
            f"{path}: user {user!r}: y must be a list of integer classes, got {y.dtype} {y.shape}"
        )
    y = y.astype(np.int64).reshape(n)
    if n and (y.min() < 0 or y.max() >= FEMNIST_CLASSES):
        bad = int(y[(y < 0) | (y >= FEMNIST_CLASSES)][0])
        raise DatasetFormatError(
            f"{path}: user {user!r}: label {bad} out of range 0..{FEMNIST_CLASSES - 1}"
        )
    return x, y


def _char_codes(path: Path, user: str, what: str, text: str, width: int) -> np.ndarray:
    """Map a concatenation of ``width``-character samples to vocabulary indices (uint8)."""
    try:
        raw = np.frombuffer(text.encode("latin-1"), np.uint8)
    except UnicodeEncodeError as e:
        bad = np.full(1, e.start)
    else:
        codes = _CHAR_LUT[raw]
        bad = np.flatnonzero(codes < 0)
        if not bad.size:
            return codes.astype(np.uint8)
    pos = int(bad[0])
    raise DatasetFormatError(
        f"{path}: user {user!r} sample {pos // width}: {what} has character {text[pos]!r}, "
        "which is not in LEAF's 80-symbol Shakespeare vocabulary"
    )


def _shakespeare_arrays(path: Path, user: str, xs: list, ys: list) -> tuple[np.ndarray, np.ndarray]:
    n = len(xs)
    for what, seqs, width in (("x", xs, SHAKESPEARE_SEQ_LEN), ("y", ys, 1)):
        for i, s in enumerate(seqs):
            # One pass per sample is unavoidable (lengths differ per string); it is cheap next to
            # json.loads, which already built every string.
            if not isinstance(s, str) or len(s) != width:
                got = f"{len(s)} characters" if isinstance(s, str) else type(s).__name__
                kind = "an 80-character string" if what == "x" else "one character"
                raise DatasetFormatError(
                    f"{path}: user {user!r} sample {i}: {what} must be {kind}, got {got}"
                )
    x = _char_codes(path, user, "x", "".join(xs), SHAKESPEARE_SEQ_LEN)
    y = _char_codes(path, user, "y", "".join(ys), 1)
    # uint8 while accumulating: 80 bytes per sample instead of 320 as float32.
    return x.reshape(n, SHAKESPEARE_SEQ_LEN), y.astype(np.int64)


@dataclass(frozen=True)
class _Dataset:
    name: str
    n_classes: int
    sample_shape: tuple[int, ...]  # shape of one sample in ScenarioData
    parse: Callable[[Path, str, list, list], tuple[np.ndarray, np.ndarray]]
    what: str  # for descriptions
    row: tuple[int, type]  # (values per sample, dtype) of LeafSplit.x


LEAF_DATASETS: dict[str, _Dataset] = {
    "femnist": _Dataset(
        "femnist",
        FEMNIST_CLASSES,
        (1, 28, 28),
        _femnist_arrays,
        "handwritten characters by writer",
        (_FEMNIST_PIXELS, np.float32),
    ),
    "shakespeare": _Dataset(
        "shakespeare",
        len(SHAKESPEARE_VOCAB),
        (SHAKESPEARE_SEQ_LEN,),
        _shakespeare_arrays,
        "next character by speaking role",
        (SHAKESPEARE_SEQ_LEN, np.uint8),
    ),
}


def _dataset(name: str) -> _Dataset:
    spec = LEAF_DATASETS.get(str(name).lower())
    if spec is None:
        raise ValueError(f"unknown LEAF dataset {name!r}; choose one of {', '.join(LEAF_DATASETS)}")
    return spec


# ----------------------------------------------------------------------------------- shard files


def _read_shard(path: Path) -> list[tuple[str, int, dict]]:
    """Parse one JSON shard and check its structure: ``[(user, num_samples, user_data), ...]``.

    Only lengths are checked here (cheap); sample contents are checked when a user is converted.
    """
    try:
        # Text, not bytes: json.loads(bytes) would hold the bytes *and* their decoded copy while
        # it parses (a FEMNIST shard is ~300 MB of text; its parsed lists are ~1 GB of objects).
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DatasetFormatError(f"{path}: not a valid LEAF JSON file ({e})") from None
    if not isinstance(doc, dict) or not {"users", "num_samples", "user_data"} <= doc.keys():
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise DatasetFormatError(
            f"{path}: expected an object with 'users', 'num_samples' and 'user_data', got {keys}"
        )
    users, counts, data = doc["users"], doc["num_samples"], doc["user_data"]
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise DatasetFormatError(f"{path}: 'users' must be a list of strings")
    if len(set(users)) != len(users):
        dup = next(u for u in users if users.count(u) > 1)
        raise DatasetFormatError(f"{path}: user {dup!r} is listed twice")
    if not isinstance(counts, list) or len(counts) != len(users):
        got = len(counts) if isinstance(counts, list) else type(counts).__name__
        raise DatasetFormatError(
            f"{path}: 'num_samples' must list one count per user ({len(users)}), got {got}"
        )
    if not isinstance(data, dict) or set(data) != set(users):
        extra = sorted(set(data) ^ set(users)) if isinstance(data, dict) else []
        raise DatasetFormatError(
            f"{path}: 'user_data' must have exactly the users in 'users'"
            + (f" (differ: {extra[:3]})" if extra else "")
        )
    out = []
    for user, n in zip(users, counts, strict=True):
        ud = data[user]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise DatasetFormatError(f"{path}: user {user!r}: num_samples {n!r} is not a count")
        if (
            not isinstance(ud, dict)
            or not isinstance(ud.get("x"), list)
            or not isinstance(ud.get("y"), list)
        ):
            raise DatasetFormatError(f"{path}: user {user!r}: user_data needs lists 'x' and 'y'")
        if not len(ud["x"]) == len(ud["y"]) == n:
            raise DatasetFormatError(
                f"{path}: user {user!r}: num_samples says {n} but x has {len(ud['x'])} and "
                f"y has {len(ud['y'])} samples"
            )
        out.append((user, n, ud))
    return out


def _shards(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.glob("*.json") if p.is_file())
    if not files:
        raise LeafFilesNotFound(f"{folder}: no LEAF *.json shards in this folder")
    return files


def _sample_key(seed: int, user: str) -> bytes:
    # A keyed hash, not Python's salted hash(): the same seed picks the same users in every
    # process, whatever the shard order, and picking the N smallest keys is a uniform sample.
    return hashlib.blake2b(
        user.encode(), digest_size=8, key=(seed % 2**64).to_bytes(8, "little")
    ).digest()


@dataclass
class LeafSplit:
    """One split (train or test) of a LEAF dataset: users in sorted order and their samples.

    ``x``/``y`` hold the users' samples back to back; user ``i`` owns rows
    ``offsets[i]:offsets[i + 1]``. ``x`` is float32 pixels (FEMNIST) or uint8 vocabulary indices
    (Shakespeare); ``y`` is int64. ``all_users`` lists every user the shards name, loaded or not.
    """

    users: list[str]
    x: np.ndarray
    y: np.ndarray
    counts: np.ndarray
    files: list[Path]
    all_users: list[str]

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    @property
    def groups(self) -> np.ndarray:
        """The owning user's position in :attr:`users` for every sample (int64)."""
        return np.repeat(np.arange(len(self.users), dtype=np.int64), self.counts)

    def user_data(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples of ``users[i]``."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.x[lo:hi], self.y[lo:hi]


def read_leaf_split(
    folder: str | os.PathLike,
    dataset: str,
    *,
    max_users: int | None = None,
    select: str = "first",
    seed: int = 0,
    include: Callable[[str], bool] | None = None,
) -> LeafSplit:
    """Read and validate every ``*.json`` shard in ``folder`` (one LEAF split).

    Users with no samples are skipped (they cannot be clients). ``include(user)`` filters users;
    ``max_users`` then keeps at most that many: the first in sorted user-id order
    (``select="first"``) or a uniform random sample fixed by ``seed`` (``select="random"``). The
    result lists users in sorted order either way. A user that appears in two shards is an error.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = write_leaf_json(folder / "a.json", {"ROMEO": (["x" * 80] * 2, ["y", "z"])})
    >>> _ = write_leaf_json(folder / "b.json", {"JULIET": (["O" * 80], ["!"])})
    >>> s = read_leaf_split(folder, "shakespeare")
    >>> s.users, s.counts.tolist(), s.x.shape, SHAKESPEARE_VOCAB[s.y[0]]
    (['JULIET', 'ROMEO'], [1, 2], (3, 80), '!')
    """
    spec = _dataset(dataset)
    folder = Path(folder)
    if not folder.is_dir():
        raise LeafFilesNotFound(f"{folder}: LEAF {spec.name} folder not found")
    if select not in ("first", "random"):
        raise ValueError(f"select must be 'first' or 'random', got {select!r}")
    if max_users is not None and (isinstance(max_users, bool) or int(max_users) < 1):
        raise ValueError(f"max_users must be a positive integer or None, got {max_users!r}")
    files = _shards(folder)

    def key(user: str):
        return user if select == "first" else (_sample_key(int(seed), user), user)

    seen: dict[str, Path] = {}  # every user of the split → its shard (duplicate detection)
    kept: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for path in files:
        entries = _read_shard(path)
        for user, _, _ in entries:
            if user in seen:
                raise DatasetFormatError(f"{path}: user {user!r} is also in {seen[user]}")
            seen[user] = path
        wanted = [(u, ud) for u, n, ud in entries if n > 0 and (include is None or include(u))]
        if max_users is not None:
            # Keep only the best max_users keys seen so far, and convert only the newcomers that
            # make the cut: users that are dropped never cost a float32 array.
            best = set(heapq.nsmallest(int(max_users), [*kept, *(u for u, _ in wanted)], key=key))
            for u in [u for u in kept if u not in best]:
                del kept[u]
            wanted = [(u, ud) for u, ud in wanted if u in best]
        for user, ud in wanted:
            kept[user] = spec.parse(path, user, ud["x"], ud["y"])
        entries = wanted = None  # the parsed shard (Python lists) is the big transient: free it
    users = sorted(kept)
    xs = [kept[u][0] for u in users]
    ys = [kept[u][1] for u in users]
    width, dtype = spec.row
    return LeafSplit(
        users=users,
        x=np.concatenate(xs) if xs else np.empty((0, width), dtype),
        y=np.concatenate(ys) if ys else np.empty(0, np.int64),
        counts=np.array([len(y) for y in ys], dtype=np.int64),
        files=files,
        all_users=sorted(seen),
    )


# ----------------------------------------------------------------------------------- scenarios


def _split_folders(spec: _Dataset, data_root: str | os.PathLike | None) -> tuple[Path, Path]:
    root = Path(data_root if data_root is not None else default_data_root()).expanduser()
    # LEAF's own layout first (<leaf>/data/<name>/data/{train,test}); then a root that already
    # points at <name>/data or <name>, for people who moved the folders.
    candidates = (root / spec.name / "data", root / spec.name, root)
    for base in candidates:
        train, test = base / "train", base / "test"
        if train.is_dir():
            if not test.is_dir():
                raise LeafFilesNotFound(
                    f"{test}: missing (found {train}); LEAF's preprocess.sh writes both splits: "
                    "run it with '-t sample'"
                )
            return train, test
    looked = ", ".join(str(c / "train") for c in candidates)
    raise LeafFilesNotFound(
        f"{spec.name}: no LEAF train/ and test/ folders of *.json shards; looked in {looked}. "
        "fedpress never downloads: on a machine with network access, run LEAF's "
        f"data/{spec.name}/preprocess.sh from https://github.com/TalwalkarLab/leaf (e.g. "
        "'./preprocess.sh -s niid --sf 0.05 -k 0 -t sample' for a small version), and pass the "
        f"folder that holds {spec.name}/ as data_root (or set ${DATA_ROOT_ENV})."
    )


def load_leaf(
    dataset: str,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    *,
    max_clients: int | None = None,
    select: str = "first",
    max_test: int | None = None,
) -> ScenarioData:
    """Load a LEAF dataset as :class:`ScenarioData` with one natural client per LEAF user.

    Looks for ``<root>/<dataset>/data/{train,test}/*.json`` (then ``<root>/<dataset>/`` and
    ``<root>/`` itself), ``root`` being ``data_root`` or ``$FEDPRESS_DATA`` (default ``data``).

    - Clients: the train split's users (at most ``max_clients``, see :func:`read_leaf_split` for
      ``select``), in sorted user-id order; ``groups[j]`` is the client of training sample ``j``,
      so client ``i`` holds exactly user ``i``'s training samples.
    - Test set: the test samples of those same users (LEAF's ``-t sample`` split), plus every
      user that appears only in the test split (LEAF's ``-t user`` split holds users out). At
      most ``max_test`` samples, drawn without replacement by ``seed``.

    ``seed`` matters only for ``select="random"`` and ``max_test``.
    """
    spec = _dataset(dataset)
    if max_test is not None and (isinstance(max_test, bool) or int(max_test) < 1):
        raise ValueError(f"max_test must be a positive integer or None, got {max_test!r}")
    train_dir, test_dir = _split_folders(spec, data_root)
    train = read_leaf_split(train_dir, spec.name, max_users=max_clients, select=select, seed=seed)
    if not train.users:
        raise DatasetFormatError(f"{train_dir}: no LEAF user has any training samples")
    # A test user is either one of the chosen clients (sample split) or a held-out user never seen
    # in training (user split); test samples of train users that were not chosen are left out,
    # since they would measure clients that do not exist in this run.
    all_train = set(train.all_users)
    chosen = set(train.users)
    test = read_leaf_split(test_dir, spec.name, include=lambda u: u in chosen or u not in all_train)
    if not test.users:
        raise DatasetFormatError(
            f"{test_dir}: no test samples for the {len(chosen)} chosen users "
            f"({', '.join(train.users[:3])}{', ...' if len(chosen) > 3 else ''})"
        )
    x_te, y_te = test.x, test.y
    if max_test is not None and len(y_te) > max_test:
        idx = np.sort(np.random.default_rng(seed).choice(len(y_te), int(max_test), replace=False))
        x_te, y_te = x_te[idx], y_te[idx]
    shape = (-1, *spec.sample_shape)
    return to_data(
        train.x.reshape(shape),
        train.y,
        x_te.reshape(shape),
        y_te,
        n_classes=spec.n_classes,
        groups=train.groups,
        description=(
            f"LEAF {spec.name} ({spec.what}) from {train_dir.parent}: {len(train.users)} clients, "
            f"{len(train.y)} train / {len(y_te)} test samples"
        ),
    )


def load_femnist(seed: int = 0, data_root: str | os.PathLike | None = None, **kw) -> ScenarioData:
    """FEMNIST (62 classes, one client per writer) as ``(N, 1, 28, 28)``; see :func:`load_leaf`.

    >>> load_femnist(data_root="/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fedpress.data.leaf.LeafFilesNotFound: femnist: no LEAF train/ and test/ folders ...
    """
    return load_leaf("femnist", seed, data_root, **kw)


def load_shakespeare(
    seed: int = 0, data_root: str | os.PathLike | None = None, **kw
) -> ScenarioData:
    """Shakespeare next-character prediction (80 classes, one client per speaking role) as
    ``(N, 80)`` float32 vocabulary indices; see :func:`load_leaf`.

    >>> load_shakespeare(data_root="/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fedpress.data.leaf.LeafFilesNotFound: shakespeare: no LEAF train/ and test/ folders ...
    """
    return load_leaf("shakespeare", seed, data_root, **kw)


# ------------------------------------------------------------------------------------- writing


def write_leaf_json(
    path: str | os.PathLike, users: Mapping[str, tuple[Iterable, Iterable]]
) -> Path:
    """Write ``{user: (x, y)}`` as one LEAF JSON shard (creating parent folders); returns the path.

    For converting your own federated data to LEAF's layout, and for tests. FEMNIST ``x`` rows
    are 784 floats in [0, 1], ``y`` ints; Shakespeare ``x`` items are 80-character strings and
    ``y`` single characters. Numpy arrays are converted to lists.

    >>> import tempfile
    >>> p = write_leaf_json(Path(tempfile.mkdtemp()) / "t.json", {"u": ([[0.5] * 784], [7])})
    >>> json.loads(p.read_text())["num_samples"]
    [1]
    """

    def plain(v):
        return (
            v.tolist()
            if isinstance(v, np.ndarray)
            else [x.tolist() if isinstance(x, np.ndarray | np.generic) else x for x in v]
        )

    doc: dict = {"users": [], "num_samples": [], "user_data": {}}
    for user, (x, y) in users.items():
        x, y = plain(x), plain(y)
        if len(x) != len(y):
            raise ValueError(f"user {user!r}: {len(x)} inputs but {len(y)} labels")
        doc["users"].append(str(user))
        doc["num_samples"].append(len(y))
        doc["user_data"][str(user)] = {"x": x, "y": y}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: LEAF files are strict JSON; NaN would be unreadable by other tools.
    path.write_text(json.dumps(doc, allow_nan=False))
    return path
