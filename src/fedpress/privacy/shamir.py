"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2²⁵⁶ + 297).

This is the textbook scheme (Shamir 1979): a random polynomial f of degree t−1 with f(0) = secret;
holder x gets (x, f(x)); any t shares give f(0) by Lagrange interpolation, fewer reveal nothing.
It is field arithmetic on Python integers, not a cipher: the only security-relevant ingredient is
that the coefficients come from a cryptographically secure generator (``secrets`` by default).

Why this prime: secure aggregation shares X25519 private keys and 32-byte seeds, i.e. integers up
to 2²⁵⁶ − 1, so the field must be larger than that; 2²⁵⁶ + 297 is the smallest prime above 2²⁵⁶,
which keeps a share value at 33 bytes.

>>> shares = split(bytes(range(32)), holders=[1, 2, 3, 4, 5], threshold=3)
>>> combine(shares[1:4], threshold=3) == bytes(range(32))
True
>>> combine(shares[:2], threshold=3)
Traceback (most recent call last):
...
ValueError: need at least 3 shares to reconstruct, got 2
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

#: The field modulus: the smallest prime above 2**256 (checked by tests/privacy with Miller-Rabin).
PRIME = (1 << 256) + 297
SECRET_BYTES = 32
#: A serialized share value: enough bytes for any element of the field.
VALUE_BYTES = (PRIME.bit_length() + 7) // 8  # 33
#: A serialized share: 4-byte holder index + the value.
SHARE_BYTES = 4 + VALUE_BYTES


@dataclass(frozen=True)
class Share:
    """One point (x, f(x)) of the sharing polynomial; ``x`` is the holder's index (≥ 1)."""

    x: int
    y: int

    def to_bytes(self) -> bytes:
        """Fixed-size big-endian serialization (``SHARE_BYTES`` long).

        >>> len(Share(3, 12345).to_bytes()) == SHARE_BYTES
        True
        """
        return self.x.to_bytes(4, "big") + self.y.to_bytes(VALUE_BYTES, "big")

    @classmethod
    def from_bytes(cls, b: bytes) -> Share:
        """Inverse of :meth:`to_bytes`; rejects wrong lengths and values outside the field.

        >>> Share.from_bytes(Share(3, 12345).to_bytes())
        Share(x=3, y=12345)
        """
        if len(b) != SHARE_BYTES:
            raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(b)}")
        x, y = int.from_bytes(b[:4], "big"), int.from_bytes(b[4:], "big")
        if not (1 <= x < PRIME and 0 <= y < PRIME):
            raise ValueError("share outside the field")
        return cls(x, y)


def _random_field_element(randbytes: Callable[[int], bytes]) -> int:
    # 64 extra bits make the modular reduction's bias negligible (< 2^-64).
    return int.from_bytes(randbytes(SECRET_BYTES + 8), "big") % PRIME


def split(
    secret: bytes,
    holders: Sequence[int],
    threshold: int,
    randbytes: Callable[[int], bytes] = secrets.token_bytes,
) -> list[Share]:
    """Share a 32-byte ``secret`` among ``holders`` (distinct indices ≥ 1) so that any
    ``threshold`` of them reconstruct it. ``randbytes`` must be a CSPRNG (``secrets`` by default;
    secure aggregation passes a ChaCha20 keystream when the simulation asks for reproducibility).

    >>> [s.x for s in split(bytes(32), [4, 7, 9], threshold=2)]
    [4, 7, 9]
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    xs = [int(x) for x in holders]
    if len(set(xs)) != len(xs) or any(not 1 <= x < PRIME for x in xs):
        raise ValueError("holder indices must be distinct and >= 1")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in 1..{len(xs)}, got {threshold}")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [_random_field_element(randbytes) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def combine(shares: Iterable[Share], threshold: int) -> bytes:
    """Reconstruct the secret from at least ``threshold`` shares (the first ``threshold`` of
    them are used) by Lagrange interpolation at 0.

    >>> s = split(b"k" * 32, [1, 2, 3], threshold=2)
    >>> combine([s[2], s[0]], threshold=2)
    b'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk'
    """
    pts = list(shares)
    if len(pts) < threshold:
        raise ValueError(f"need at least {threshold} shares to reconstruct, got {len(pts)}")
    pts = pts[:threshold]
    xs = [p.x for p in pts]
    if len(set(xs)) != len(xs):
        raise ValueError("shares must come from distinct holders")
    secret = 0
    for i, pi in enumerate(pts):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - pi.x) % PRIME
        secret = (secret + pi.y * num * pow(den, -1, PRIME)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        # Only inconsistent (corrupted or mixed-up) shares interpolate to a value this large.
        raise ValueError("shares are inconsistent: reconstructed value is not a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")
