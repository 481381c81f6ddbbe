"""Product quantisation (fedpress.codecs.vq): codebook fitting, nearest-centroid codes, bytes, and
the malformed blobs only pq can receive. The five laws run on pq in tests/conformance."""

from __future__ import annotations

import numpy as np
import pytest

import fedpress
from fedpress import WireError
from fedpress.codecs._bits import packed_len
from fedpress.codecs.vq import code_bits, fit_codebook, nearest
from fedpress.wire.format import read_blob, write_blob


def rel_err(x, y):
    return float(np.linalg.norm(y - x) / np.linalg.norm(x))


def test_nearest_is_the_exact_argmin_even_for_near_ties():
    rng = np.random.default_rng(0)
    cb = rng.normal(size=(37, 5)).astype(np.float32)
    pts = rng.normal(size=(5000, 5)).astype(np.float32)
    # points halfway between two centroids, nudged by far less than float32's rounding of ‖p‖²
    mid = ((cb[3].astype(np.float64) + cb[7]) / 2).astype(np.float32)
    pts[:2] = mid
    brute = ((pts[:, None, :].astype(np.float64) - cb[None].astype(np.float64)) ** 2).sum(-1)
    got = nearest(pts, cb)
    assert np.all(brute[np.arange(len(pts)), got] == brute.min(1))
    assert nearest(np.zeros((0, 5), np.float32), cb).shape == (0,)


def test_codebook_never_has_more_rows_than_distinct_points():
    rng = np.random.default_rng(1)
    pts = np.repeat(rng.normal(size=(3, 4)).astype(np.float32), 50, axis=0)
    cb = fit_codebook(pts, 16, 10, 8192, np.random.default_rng(0))
    assert cb.shape == (3, 4)
    assert {tuple(r) for r in cb} == {tuple(r) for r in pts}


def test_a_learned_codebook_finds_structure_that_sign_cannot():
    """Sub-vectors drawn around 16 prototypes: a 16-centroid codebook recovers them almost exactly at
    0.5 bit per value, where sign at 1 bit per value keeps most of the error."""
    rng = np.random.default_rng(2)
    protos = rng.normal(size=(16, 8)).astype(np.float32)
    x = (protos[rng.integers(0, 16, 20000)] + 0.01 * rng.normal(size=(20000, 8))).astype(np.float32).ravel()
    pq = fedpress.compress(x, "pq:dim=8,centroids=16", seed=3)
    sign = fedpress.compress(x, "sign", seed=3)
    assert len(pq) < len(sign)
    assert rel_err(x, fedpress.decompress(pq)) < 0.02
    assert rel_err(x, fedpress.decompress(sign)) > 0.3


def test_more_centroids_or_shorter_sub_vectors_lose_less():
    x = np.random.default_rng(3).standard_t(3, size=40000).astype(np.float32)
    errs = [rel_err(x, fedpress.decompress(fedpress.compress(x, s, seed=1)))
            for s in ("pq:dim=8,centroids=4", "pq:dim=8,centroids=64", "pq:dim=2,centroids=64")]
    assert errs[0] > errs[1] > errs[2]


def test_small_tensors_travel_exactly():
    x = np.arange(30, dtype=np.float32)  # 7 sub-vectors of 4 and 2 leftover values
    assert np.array_equal(fedpress.decompress(fedpress.compress(x, "pq:dim=4,centroids=8")), x)
    x = np.arange(3, dtype=np.float32)  # not one whole sub-vector: all leftover
    assert np.array_equal(fedpress.decompress(fedpress.compress(x, "pq:dim=4")), x)


def test_fields_are_k_then_codebook_and_leftover_then_codes():
    x = np.random.default_rng(4).normal(size=1003).astype(np.float32)  # 250 sub-vectors of 4, 3 left
    p = read_blob(fedpress.compress(x, "pq:dim=4,centroids=32", seed=2))
    k = p.fields[0][0] + 1
    assert k == 32
    assert len(p.fields[1]) == k * 4 * 4  # codebook, float32
    assert len(p.fields[2]) == 3 * 4  # leftover values
    assert len(p.fields[3]) == packed_len(250, code_bits(32)) == 157
    assert code_bits(2) == 1 and code_bits(256) == 8 and code_bits(1) == 0 and code_bits(5) == 3


def _tampered(blob, i, new):
    p = read_blob(blob)
    fields = [bytes(f) for f in p.fields]
    fields[i] = new
    return write_blob(p.spec, p.seed, p.structure, fields)[0]


def test_malformed_pq_blobs_are_wire_errors():
    x = np.random.default_rng(5).normal(size=400).astype(np.float32)
    blob = fedpress.compress(x, "pq:dim=4,centroids=8", seed=1)
    p = read_blob(blob)
    with pytest.raises(WireError, match="codebook of 9 centroids"):
        fedpress.decompress(_tampered(blob, 0, bytes([8])))  # 9 > centroids=8
    assert len(p.fields[2]) == 0  # 400 = 100 sub-vectors of 4: no leftover values
    codes = bytearray(p.fields[3])
    codes[0] = 0xFF  # 3-bit codes: 7 is valid with 8 centroids; shrink K to 5 so 7 is beyond it
    bad = read_blob(_tampered(blob, 3, bytes(codes)))
    fields = [bytes(f) for f in bad.fields]
    fields[0] = bytes([4])
    fields[1] = fields[1][: 5 * 4 * 4]
    with pytest.raises(WireError, match="beyond its 5 centroids"):
        fedpress.decompress(write_blob(bad.spec, bad.seed, bad.structure, fields)[0])
    with pytest.raises(WireError):
        fedpress.decompress(_tampered(blob, 3, bytes(p.fields[3])[:-1]))


def test_error_feedback_keeps_what_pq_dropped():
    x = np.random.default_rng(6).normal(size=4096).astype(np.float32)
    c = fedpress.codec("ef+pq:dim=8,centroids=16,warm=0")
    blob, state = c.encode(x, c.init(), seed=1)
    (res,) = state.values()
    np.testing.assert_array_equal(res, x - fedpress.decompress(blob))


def test_warm_start_keeps_the_codebook_and_starts_from_it(monkeypatch):
    """warm=1 keeps each tensor's fitted codebook in the codec state; the next round's k-means
    starts from it (not from k-means++), and a codebook of the wrong shape is ignored."""
    import sklearn.cluster

    g = np.random.default_rng(7)
    x = {"a": g.normal(size=4096).astype(np.float32), "b": g.normal(size=800).astype(np.float32)}
    c = fedpress.codec("pq:dim=8,centroids=16")
    assert c.stateful and not fedpress.codec("pq:warm=0").stateful
    _, st = c.encode(x, c.init(), seed=1)
    books = {k: v for k, v in st.items() if v.shape == (16, 8)}
    assert len(books) == 2  # one codebook per tensor
    inits = []
    real_fit = sklearn.cluster.KMeans.fit

    def spy(self, *a, **kw):
        inits.append(self.init)
        return real_fit(self, *a, **kw)

    monkeypatch.setattr(sklearn.cluster.KMeans, "fit", spy)
    blob, st2 = c.encode(x, st, seed=2)
    assert all(isinstance(i, np.ndarray) for i in inits) and len(inits) == 2
    for key, book in books.items():
        assert any(np.array_equal(i, book) for i in inits), key
    # same state, same seed: same bytes; a state of another shape falls back to k-means++
    assert c.encode(x, st, seed=2)[0] == blob
    inits.clear()
    c.encode(x, {k: v[:3] for k, v in st.items()}, seed=2)
    assert inits == ["k-means++", "k-means++"]
