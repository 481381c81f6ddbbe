import itertools

import pytest

from fedpress.privacy import shamir


def _miller_rabin(n: int) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_is_a_prime_above_every_secret():
    assert shamir.PRIME > 1 << 256
    assert _miller_rabin(shamir.PRIME)
    assert not _miller_rabin(shamir.PRIME + 2)  # the check itself can say no


def test_any_threshold_subset_reconstructs():
    secret = bytes(range(100, 132))
    shares = shamir.split(secret, [1, 2, 3, 4, 5, 6], threshold=4)
    for subset in itertools.combinations(shares, 4):
        assert shamir.combine(subset, 4) == secret


def test_fewer_shares_do_not_give_the_secret():
    secret = b"\x07" * 32
    shares = shamir.split(secret, [1, 2, 3, 4], threshold=3)
    with pytest.raises(ValueError, match="at least 3"):
        shamir.combine(shares[:2], 3)
    # Interpolating two points of a degree-2 polynomial gives some other value (almost surely).
    try:
        wrong = shamir.combine(shares[:2], 2)
    except ValueError:
        wrong = None
    assert wrong != secret


def test_share_serialization_and_validation():
    s = shamir.split(b"a" * 32, [9, 10], threshold=2)[0]
    assert shamir.Share.from_bytes(s.to_bytes()) == s
    assert len(s.to_bytes()) == shamir.SHARE_BYTES
    with pytest.raises(ValueError):
        shamir.Share.from_bytes(s.to_bytes()[:-1])
    with pytest.raises(ValueError):
        shamir.split(b"short", [1, 2], 2)
    with pytest.raises(ValueError):
        shamir.split(b"a" * 32, [0, 1], 2)
    with pytest.raises(ValueError):
        shamir.split(b"a" * 32, [1, 2], 3)


def test_corrupted_share_is_detected_or_changes_secret():
    secret = b"z" * 32
    a, b, c = shamir.split(secret, [1, 2, 3], threshold=3)
    bad = shamir.Share(c.x, (c.y + 1) % shamir.PRIME)
    try:
        got = shamir.combine([a, b, bad], 3)
    except ValueError:
        got = None
    assert got != secret
