"""Building blocks of secure aggregation: the modulus, k-bit packing, the ChaCha20 PRG, key
derivation, where secrets come from, and SecAgg+'s masking graph. The protocol itself is in
:mod:`fedpress.privacy.secagg`; everything cryptographic here comes from ``cryptography``.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_LABEL = b"fedpress/secagg/v1/"
KEY_BYTES = 32


class SecAggError(ValueError):
    """Secure aggregation cannot proceed (too few survivors, a protocol violation, bad input)."""


def modulus_bits(bits: int, n_clients: int, margin: int = 0) -> int:
    """Bits k of the modulus 2ᵏ so that the sum of ``n_clients`` codes of ``bits`` bits never
    wraps: n·(2^bits − 1) < 2^(bits + ⌈log₂ n⌉). ``margin`` adds headroom for callers that fold
    further integers into the vector.

    >>> modulus_bits(8, 10), modulus_bits(8, 16), modulus_bits(8, 17), modulus_bits(4, 1)
    (12, 12, 13, 4)
    """
    if bits < 1 or n_clients < 1 or margin < 0:
        raise ValueError("bits and n_clients must be >= 1, margin >= 0")
    return bits + math.ceil(math.log2(n_clients)) + margin


# ----------------------------------------------------------------------------- k-bit packing
_CHUNK = 1 << 15  # values per packing step (a multiple of 8, so chunks end on byte boundaries)


def pack_uint(values: np.ndarray, k: int) -> bytes:
    """Pack non-negative integers below 2ᵏ (k in 1..64) into exactly ⌈n·k/8⌉ bytes, value j at
    bit j·k, little endian.

    >>> pack_uint(np.array([1, 2, 3]), 2).hex(), len(pack_uint(np.arange(10), 12))
    ('39', 15)
    >>> unpack_uint(pack_uint(np.array([5, 4095, 0]), 12), 3, 12).tolist()
    [5, 4095, 0]
    """
    if not 1 <= k <= 64:
        raise ValueError(f"k must be in 1..64, got {k}")
    v = np.ascontiguousarray(values, dtype=np.uint64).ravel()
    if k in (8, 16, 32, 64):
        return v.astype(f"<u{k // 8}").tobytes()
    shifts = np.arange(k, dtype=np.uint64)
    out = bytearray()
    for s in range(0, v.size, _CHUNK):
        bits = ((v[s : s + _CHUNK, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        out += np.packbits(bits.ravel(), bitorder="little").tobytes()
    return bytes(out)


def unpack_uint(buf: bytes, n: int, k: int) -> np.ndarray:
    """Inverse of :func:`pack_uint` (returns uint64); raises :class:`SecAggError` on a wrong
    byte count."""
    need = (n * k + 7) // 8
    if len(buf) != need:
        raise SecAggError(
            f"masked vector: expected {need} bytes for {n} values of {k} bits, got {len(buf)}"
        )
    raw = np.frombuffer(buf, np.uint8)
    if k in (8, 16, 32, 64):
        return raw.view(f"<u{k // 8}").astype(np.uint64)
    shifts = np.arange(k, dtype=np.uint64)
    out = np.empty(n, np.uint64)
    per = _CHUNK * k // 8
    for i, s in enumerate(range(0, n, _CHUNK)):
        m = min(_CHUNK, n - s)
        bits = np.unpackbits(
            raw[i * per : i * per + (m * k + 7) // 8], count=m * k, bitorder="little"
        )
        out[s : s + m] = (bits.reshape(m, k).astype(np.uint64) << shifts).sum(
            axis=1, dtype=np.uint64
        )
    return out


# ----------------------------------------------------------------------------- primitives
def prg(seed: bytes, n: int, k: int) -> np.ndarray:
    """n integers uniform mod 2ᵏ: the ChaCha20 keystream under the 32-byte ``seed`` read as
    little-endian uint64 and reduced mod 2ᵏ (exactly uniform, as 2ᵏ divides 2⁶⁴). The all-zero
    nonce is safe because every seed is a fresh per-round secret used as one stream.

    >>> a = prg(bytes(32), 5, 12)
    >>> a.dtype, bool((a < 4096).all()), a.tolist() == prg(bytes(32), 5, 12).tolist()
    (dtype('uint64'), True, True)
    """
    enc = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    v = np.frombuffer(enc.update(bytes(8 * n)), "<u8").astype(np.uint64)
    if k < 64:
        v &= np.uint64((1 << k) - 1)
    return v


def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=_LABEL + info).derive(
        secret
    )


class _Entropy:
    """Where a party's secrets come from: the OS CSPRNG, or (simulation) a ChaCha20 stream per
    label derived from the seed by HKDF, so runs are reproducible."""

    def __init__(self, seed: int | None):
        if seed is None:
            self.master = None
        else:
            if not 0 <= seed < 1 << 128:
                raise ValueError("seed must be a non-negative integer below 2**128")
            self.master = _hkdf(seed.to_bytes(16, "big"), b"", b"simulation-seed")

    def stream(self, label: bytes) -> Callable[[int], bytes]:
        if self.master is None:
            return secrets.token_bytes
        enc = Cipher(
            algorithms.ChaCha20(_hkdf(self.master, b"", label), bytes(16)), mode=None
        ).encryptor()
        return lambda n: enc.update(bytes(n))

    def x25519(self, label: bytes) -> X25519PrivateKey:
        if self.master is None:
            return X25519PrivateKey.generate()
        return X25519PrivateKey.from_private_bytes(self.stream(label)(KEY_BYTES))


def neighbour_graph(
    clients: list[int], neighbors: int | None, rng: np.random.Generator
) -> dict[int, set[int]]:
    """Who masks with whom. ``None`` (or a degree ≥ n−1): everyone. Otherwise SecAgg+'s random
    k-regular graph: a Harary graph (each position linked to the ±1..±k/2 next ones on a ring, plus
    the opposite position when k is odd) over a random permutation of the clients. A k-regular
    graph on n vertices needs k·n even, so an odd k with an odd n is raised to k+1.

    >>> g = neighbour_graph(list(range(10)), 4, np.random.default_rng(0))
    >>> sorted(len(v) for v in g.values()) == [4] * 10, all(u in g[v] for u in g for v in g[u])
    (True, True)
    """
    n = len(clients)
    if neighbors is None or neighbors >= n - 1:
        return {c: set(clients) - {c} for c in clients}
    if neighbors < 1:
        raise ValueError(f"neighbors must be >= 1, got {neighbors}")
    k = neighbors + (neighbors * n) % 2
    order = [clients[i] for i in rng.permutation(n)]
    graph: dict[int, set[int]] = {c: set() for c in clients}
    for i, c in enumerate(order):
        links = [i + j for j in range(1, k // 2 + 1)] + [i - j for j in range(1, k // 2 + 1)]
        if k % 2:
            links.append(i + n // 2)
        for j in links:
            graph[c].add(order[j % n])
    return graph
