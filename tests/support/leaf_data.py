"""Tiny LEAF trees (FEMNIST / Shakespeare JSON shards) for the data and experiment tests."""

import numpy as np

from fedpress.data.leaf import SHAKESPEARE_VOCAB, write_leaf_json

# user → (train samples, test samples); split over two shards, users deliberately not in sorted
# order inside the shards so the tests see the loader sort them.
USERS = {"u3": (5, 2), "u0": (3, 1), "u2": (4, 2), "u1": (6, 1), "u4": (2, 1)}
SHARDS = (("u3", "u0"), ("u2", "u1", "u4"))


def samples(dataset, n, rng):
    """``n`` random samples in the dataset's LEAF encoding (lists, as JSON holds them)."""
    if dataset == "femnist":
        return rng.random((n, 784)).round(3).tolist(), rng.integers(0, 62, n).tolist()
    vocab = np.array(list(SHAKESPEARE_VOCAB))
    x = ["".join(rng.choice(vocab, 80)) for _ in range(n)]
    return x, rng.choice(vocab, n).tolist()


def write_leaf_tree(root, dataset, users=USERS, shards=SHARDS, seed=0):
    """Write ``<root>/<dataset>/data/{train,test}/shard_<k>.json``; returns
    ``{"train": {user: (x, y)}, "test": {user: (x, y)}}`` as written."""
    rng = np.random.default_rng(seed)
    written = {"train": {}, "test": {}}
    for split, col in (("train", 0), ("test", 1)):
        for k, names in enumerate(shards):
            part = {u: samples(dataset, users[u][col], rng) for u in names}
            write_leaf_json(root / dataset / "data" / split / f"shard_{k}.json", part)
            written[split].update(part)
    return written
