import math

import numpy as np
import pytest

from fedpress.privacy import secagg
from fedpress.privacy.secagg import (
    SecAggError,
    SecAggRound,
    modulus_bits,
    neighbour_graph,
    pack_uint,
    prg,
    unpack_uint,
)


def _codes(clients, n, bits, seed=0):
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, 1 << bits, n) for c in clients}


@pytest.mark.parametrize("neighbors", [None, 4])
def test_secure_sum_is_the_exact_integer_sum(neighbors):
    clients = [3, 5, 8, 11, 12, 20, 21, 30]
    codes = _codes(clients, 1001, 8)
    rnd = SecAggRound(clients, threshold=3, bits=8, vector_len=1001, seed=42, neighbors=neighbors)
    sent = {c: rnd.mask(c, codes[c]) for c in clients}
    total, meas = rnd.unmask_sum(sent, dropped=set())
    assert total.dtype == np.uint64
    np.testing.assert_array_equal(total, sum(codes[c] for c in clients))
    assert meas["secagg_survivors"] == 8 and meas["secagg_recovered_keys"] == 0


def test_sum_never_wraps_at_the_worst_case():
    clients = list(range(16))
    rnd = SecAggRound(clients, threshold=9, bits=4, vector_len=10, seed=1)
    assert rnd.k == modulus_bits(4, 16) == 8
    sent = {c: rnd.mask(c, np.full(10, 15)) for c in clients}
    total, _ = rnd.unmask_sum(sent, dropped=())
    assert total.tolist() == [240] * 10


def test_pairwise_masks_cancel():
    clients = list(range(6))
    codes = _codes(clients, 257, 6, seed=3)
    rnd = SecAggRound(clients, threshold=4, bits=6, vector_len=257, seed=5)
    top = np.uint64((1 << rnd.k) - 1)
    acc = np.zeros(257, np.uint64)
    for c in clients:
        y = unpack_uint(rnd.mask(c, codes[c]), 257, rnd.k)
        y -= prg(rnd._parties[c]._b, 257, rnd.k)  # remove only the self-mask
        # One vector without its self-mask is still hidden by its pairwise masks ...
        assert np.mean((y & top) == codes[c]) < 0.05
        acc += y
    # ... but in the sum the pairwise masks cancel exactly.
    np.testing.assert_array_equal(acc & top, sum(codes.values()))


def test_server_never_sees_an_individual_unmasked_vector():
    clients = list(range(7))
    n, bits = 300, 8
    codes = _codes(clients, n, bits, seed=9)
    rnd = SecAggRound(clients, threshold=4, bits=bits, vector_len=n, seed=11)
    sent = {c: rnd.mask(c, codes[c]) for c in clients if c not in (2, 5)}
    total, _ = rnd.unmask_sum(sent, dropped={2, 5})
    np.testing.assert_array_equal(total, sum(codes[c] for c in sent))
    tr = rnd.server.transcript
    assert {p for p, _, _ in tr} == {"advertise", "shares", "masked", "unmask"}
    masked = [(c, b) for p, c, b in tr if p == "masked"]
    assert len(masked) == 5
    for _c, blob in masked:
        y = unpack_uint(blob, n, rnd.k)
        for plain in codes.values():
            assert np.mean(y == plain) < 0.05  # no client's codes, not even mostly
        # Masked values spread over the whole modulus, far beyond the code range.
        assert y.max() >= 1 << bits
    for c in clients:  # no plain packed codes hidden anywhere in what the server received
        packed = pack_uint(codes[c], bits)
        packed_k = pack_uint(codes[c], rnd.k)
        for _, _, blob in tr:
            assert packed[:32] not in blob and packed_k[:32] not in blob
    # For every owner the server got shares of the self-mask seed or of the mask key, never both.
    kinds: dict[int, set[int]] = {}
    for p, _, blob in tr:
        if p == "unmask":
            for kind, owner, _ in secagg._RESP.iter_unpack(blob):
                kinds.setdefault(owner, set()).add(kind)
    assert all(len(k) == 1 for k in kinds.values())
    assert {o for o, k in kinds.items() if k == {1}} == {2, 5}


@pytest.mark.parametrize("neighbors", [None, 6])
def test_thirty_percent_dropout_after_upload_is_recovered(neighbors):
    clients = list(range(10))
    codes = _codes(clients, 500, 8, seed=2)
    rnd = SecAggRound(clients, threshold=4, bits=8, vector_len=500, seed=8, neighbors=neighbors)
    masked = {c: rnd.mask(c, codes[c]) for c in clients}  # everyone masked ...
    dropped = {1, 4, 7}
    received = {c: b for c, b in masked.items() if c not in dropped}  # ... 30% never arrive
    total, meas = rnd.unmask_sum(received, dropped=dropped)
    np.testing.assert_array_equal(total, sum(codes[c] for c in received))
    assert meas["secagg_dropped"] == 3 and meas["secagg_recovered_keys"] == 3


def test_silence_during_unmasking_is_tolerated_above_threshold():
    clients = list(range(8))
    codes = _codes(clients, 64, 5, seed=4)
    rnd = SecAggRound(clients, threshold=4, bits=5, vector_len=64, seed=3)
    received = {c: rnd.mask(c, codes[c]) for c in clients if c != 0}
    total, meas = rnd.unmask_sum(received, dropped={0}, unmask_dropouts={6, 7})
    np.testing.assert_array_equal(total, sum(codes[c] for c in received))  # 6 and 7 still count
    assert meas["secagg_unmask_dropouts"] == 2


def test_below_threshold_is_one_clean_error():
    clients = list(range(5))
    codes = _codes(clients, 16, 4)
    rnd = SecAggRound(clients, threshold=4, bits=4, vector_len=16, seed=0)
    received = {c: rnd.mask(c, codes[c]) for c in (0, 1, 2)}
    with pytest.raises(SecAggError, match="threshold"):
        rnd.unmask_sum(received, dropped={3, 4})
    rnd2 = SecAggRound(clients, threshold=4, bits=4, vector_len=16, seed=0)
    received = {c: rnd2.mask(c, codes[c]) for c in clients}
    with pytest.raises(SecAggError, match="threshold is 4"):
        rnd2.unmask_sum(received, dropped=(), unmask_dropouts={0, 1})
    assert issubclass(SecAggError, ValueError)


def test_masks_are_one_time_and_inputs_checked():
    rnd = SecAggRound([0, 1, 2], threshold=2, bits=4, vector_len=5, seed=0)
    rnd.mask(0, np.zeros(5, int))
    with pytest.raises(SecAggError, match="one-time"):
        rnd.mask(0, np.zeros(5, int))
    with pytest.raises(SecAggError, match="2\\*\\*4"):
        rnd.mask(1, np.full(5, 16))
    with pytest.raises(SecAggError, match="expected 5"):
        rnd.mask(1, np.zeros(4, int))
    with pytest.raises(SecAggError, match="not part"):
        rnd.mask(9, np.zeros(5, int))
    with pytest.raises(ValueError, match="either received or dropped"):
        rnd.unmask_sum({0: b""}, dropped={1})
    with pytest.raises(ValueError, match="threshold must be"):
        SecAggRound([0, 1, 2], threshold=4, bits=4, vector_len=5)


def test_malformed_upload_and_tampered_shares_are_rejected():
    rnd = SecAggRound([0, 1, 2], threshold=2, bits=4, vector_len=5, seed=0)
    sent = {c: rnd.mask(c, np.ones(5, int)) for c in range(3)}
    sent[1] = sent[1][:-1]
    with pytest.raises(SecAggError, match="expected"):
        rnd.unmask_sum(sent, dropped=())
    rnd = SecAggRound([0, 1, 2], threshold=2, bits=4, vector_len=5, seed=0)
    ct = bytearray(rnd._parties[1]._ciphertexts[0])
    ct[10] ^= 1
    rnd._parties[1]._ciphertexts[0] = bytes(ct)
    sent = {c: rnd.mask(c, np.ones(5, int)) for c in (1, 2)}
    with pytest.raises(SecAggError, match="authentication"):
        rnd.unmask_sum(sent, dropped={0})


def test_byte_counts_come_from_the_messages():
    clients = list(range(6))
    n, bits = 100, 8
    rnd = SecAggRound(clients, threshold=3, bits=bits, vector_len=n, seed=2, neighbors=2)
    setup = rnd.setup_bytes()
    up_seen = {c: 0 for c in clients}
    for phase, c, blob in rnd.server.transcript:
        assert phase in ("advertise", "shares")
        up_seen[c] += len(blob)
    assert {c: u for c, (u, _) in setup.items()} == up_seen
    assert all(d > 0 for _, d in setup.values())
    codes = _codes(clients, n, bits)
    sent = {c: rnd.mask(c, codes[c]) for c in clients}
    assert all(len(b) == math.ceil(n * rnd.k / 8) for b in sent.values())
    _, meas = rnd.unmask_sum(sent, dropped=())
    assert meas["secagg_masked_bytes"] == sum(len(b) for b in sent.values())
    assert meas["secagg_plain_code_bytes"] == sum(len(pack_uint(codes[c], bits)) for c in clients)
    unmask_up = sum(len(b) for p, _, b in rnd.server.transcript if p == "unmask")
    assert meas["secagg_unmask_uplink_bytes"] == unmask_up
    s_up = sum(u for u, _ in setup.values())
    s_down = sum(d for _, d in setup.values())
    assert meas["secagg_overhead_bytes"] == (
        s_up
        + s_down
        + meas["secagg_masked_bytes"]
        - meas["secagg_plain_code_bytes"]
        + unmask_up
        + meas["secagg_unmask_downlink_bytes"]
    )
    extra = meas["secagg_client_extra_bytes"]
    assert sum(u + d for u, d in extra.values()) == meas["secagg_overhead_bytes"]
    # SecAgg+ with 2 neighbours costs less setup than the full graph.
    full = SecAggRound(clients, threshold=3, bits=bits, vector_len=n, seed=2).setup_bytes()
    assert sum(map(sum, full.values())) > sum(map(sum, setup.values()))


def test_same_seed_same_bytes_other_seed_other_bytes():
    def run(seed):
        rnd = SecAggRound([0, 1, 2, 3], threshold=3, bits=8, vector_len=50, seed=seed)
        return [rnd.mask(c, np.arange(50) % 256) for c in range(4)]

    assert run(1) == run(1)
    assert run(1)[0] != run(2)[0]
    fresh = SecAggRound([0, 1, 2], threshold=2, bits=8, vector_len=50)  # OS randomness
    other = SecAggRound([0, 1, 2], threshold=2, bits=8, vector_len=50)
    assert fresh.mask(0, np.zeros(50, int)) != other.mask(0, np.zeros(50, int))


@pytest.mark.parametrize("k", [1, 3, 8, 12, 13, 16, 31, 32, 45, 64])
def test_pack_uint_roundtrip(k):
    rng = np.random.default_rng(k)
    n = 33_001 if k == 13 else 1003  # 33_001 crosses the chunk boundary
    hi = (1 << k) - 1
    v = rng.integers(0, hi, n, dtype=np.uint64, endpoint=True)
    b = pack_uint(v, k)
    assert len(b) == math.ceil(n * k / 8)
    np.testing.assert_array_equal(unpack_uint(b, n, k), v)


def test_prg_is_uniform_mod_2k():
    v = prg(b"\x01" * 32, 200_000, 4)
    counts = np.bincount(v.astype(np.int64), minlength=16)
    assert counts.size == 16
    assert abs(counts / v.size - 1 / 16).max() < 0.005


def test_neighbour_graph_is_regular_and_symmetric():
    rng = np.random.default_rng(0)
    for n, k in [(10, 3), (11, 3), (12, 5), (7, 2), (5, 10)]:
        g = neighbour_graph(list(range(n)), k, rng)
        deg = {len(v) for v in g.values()}
        want = n - 1 if k >= n - 1 else k + (k * n) % 2
        assert deg == {want}
        assert all(u in g[v] and u != v for u in g for v in g[u])


def test_modulus_bits():
    assert modulus_bits(8, 1) == 8
    assert modulus_bits(8, 2) == 9
    assert modulus_bits(8, 1000) == 18
    assert modulus_bits(8, 1000, margin=2) == 20
    with pytest.raises(ValueError):
        modulus_bits(0, 3)
