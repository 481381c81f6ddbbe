"""Secure aggregation: the server learns the sum of the clients' integer codes and nothing else.

The protocol is the SecAgg family (Bonawitz et al., CCS 2017) with the optional sparse-graph
variant SecAgg+ (Bell et al., CCS 2020), in the honest-but-curious model, simulated in one process
but with every party's state kept apart and every message really serialized:

1. **Advertise keys.** Each client makes two X25519 key pairs for this round: a *channel* pair
   (to encrypt shares to its peers) and a *mask* pair (for pairwise mask seeds), and uploads both
   public keys. The server forwards each client its neighbours' keys.
2. **Share keys.** Client u draws a self-mask seed b_u and splits b_u and its mask private key
   into Shamir t-of-(d+1) shares (d = its degree; it keeps one share itself). Each peer's pair of
   shares is encrypted with ChaCha20-Poly1305 under HKDF(X25519(channel keys)) and relayed by the
   server, which cannot read them.
3. **Masked input.** y_u = x_u + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)  (mod 2ᵏ), where
   s_uv = HKDF(X25519(mask keys)) is the same for u and v, and PRG is a ChaCha20 keystream read as
   uniform integers mod 2ᵏ. Pairwise masks cancel in the sum; the self-mask protects a client
   whose upload is merely late (its pairwise masks might otherwise be unmasked).
4. **Unmasking.** The server announces who survived and who dropped. Each responding client sends,
   for every neighbour, *either* its share of b_u (u survived) *or* its share of u's mask key
   (u dropped) — never both, and only once. The server reconstructs the self-masks of survivors
   and, from dropped clients' keys, the pairwise masks they left in survivors' vectors, and removes
   both **from the aggregate only**: no individual vector is ever unmasked.

Recovery needs, for every client whose secret is needed, at least ``threshold`` of its share
holders among the clients that answer the unmasking round; otherwise :class:`SecAggError`.

Arithmetic is modulo 2ᵏ with k = :func:`modulus_bits` (code bits + ⌈log₂ n⌉), so the true sum of
n codes below 2^bits never wraps. Masked vectors are uniform mod 2ᵏ: they cost k bits a value
instead of the code's ``bits`` and do not compress; :meth:`SecAggRound.unmask_sum` reports every
extra byte as ``secagg_overhead_bytes``.

Randomness: with ``seed=None`` keys come from ``os.urandom`` (``X25519PrivateKey.generate``) and
Shamir coefficients from ``secrets``. A simulation passes an integer ``seed`` to make runs
reproducible; all secrets are then derived from it through HKDF and ChaCha20, so the seed is itself
a secret — never use a fixed seed in a deployment.

>>> import numpy as np
>>> codes = {c: np.arange(6) * (c + 1) % 16 for c in range(4)}
>>> rnd = SecAggRound([0, 1, 2, 3], threshold=3, bits=4, vector_len=6, seed=1)
>>> sent = {c: rnd.mask(c, codes[c]) for c in (0, 1, 3)}   # client 2 drops after setup
>>> total, meas = rnd.unmask_sum(sent, dropped={2})
>>> total.tolist() == sum(codes[c] for c in (0, 1, 3)).tolist()
True
>>> meas["secagg_recovered_keys"], meas["secagg_overhead_bytes"] > 0
(1, True)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from fedpress.privacy import shamir
from fedpress.privacy.masking import (
    KEY_BYTES,
    SecAggError,
    _Entropy,
    _hkdf,
    modulus_bits,
    neighbour_graph,
    pack_uint,
    prg,
    unpack_uint,
)
from fedpress.privacy.shamir import SHARE_BYTES, Share

__all__ = [
    "SecAggClient",
    "SecAggError",
    "SecAggRound",
    "SecAggServer",
    "modulus_bits",
    "neighbour_graph",
    "pack_uint",
    "prg",
    "unpack_uint",
]

_ADV = struct.Struct(">I32s32s")  # client id, channel public key, mask public key
_U32 = struct.Struct(">I")
_PLAIN = 8 + 2 * SHARE_BYTES  # sender, receiver, share of b_u, share of the mask key
_CT = _PLAIN + 16  # + Poly1305 tag
_RESP = struct.Struct(f">BI{SHARE_BYTES}s")  # kind (0 self-mask seed, 1 mask key), owner, share


def _pair_info(kind: bytes, u: int, v: int) -> bytes:
    # Binding both ids (in a fixed order) gives every pair and purpose its own key.
    return kind + struct.pack(">II", min(u, v), max(u, v))


def _pub_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _priv_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


# ----------------------------------------------------------------------------- the client
class SecAggClient:
    """One client's side of a round. Holds its private keys, its self-mask seed and the shares
    its peers sent it; only serialized messages leave it."""

    def __init__(
        self,
        cid: int,
        round_id: bytes,
        bits: int,
        k: int,
        vector_len: int,
        threshold: int,
        entropy: _Entropy,
    ):
        self.id = cid
        self.round_id = round_id
        self.bits, self.k, self.n = bits, k, vector_len
        self.threshold = threshold
        tag = _U32.pack(cid)
        self._entropy = entropy
        self._tag = tag
        self._c_sk = entropy.x25519(b"channel-key" + tag)
        self._s_sk = entropy.x25519(b"mask-key" + tag)
        self._b = entropy.stream(b"self-mask-seed" + tag)(KEY_BYTES)
        self._peers: dict[int, tuple[X25519PublicKey, X25519PublicKey]] = {}
        self._ciphertexts: dict[int, bytes] = {}
        self._own: tuple[Share, Share] | None = None
        self._masked = False
        self._answered = False
        self.plain_code_bytes = 0  # what the same codes would have cost unmasked (measured)

    # -- round 1
    def advertise(self) -> bytes:
        return _ADV.pack(self.id, _pub_bytes(self._c_sk), _pub_bytes(self._s_sk))

    def receive_roster(self, blob: bytes) -> None:
        if len(blob) % _ADV.size:
            raise SecAggError(f"client {self.id}: malformed key roster")
        for vid, c_pk, s_pk in _ADV.iter_unpack(blob):
            if vid == self.id:
                raise SecAggError(f"client {self.id}: roster lists the client itself")
            self._peers[vid] = (
                X25519PublicKey.from_public_bytes(c_pk),
                X25519PublicKey.from_public_bytes(s_pk),
            )

    def _channel(self, peer: int) -> ChaCha20Poly1305:
        shared = self._c_sk.exchange(self._peers[peer][0])
        return ChaCha20Poly1305(_hkdf(shared, self.round_id, _pair_info(b"channel", self.id, peer)))

    # -- round 2
    def share_keys(self) -> bytes:
        """Shamir-share b_u and the mask private key among the neighbours (and itself); return
        the concatenated envelopes ``receiver id ‖ ChaCha20-Poly1305 ciphertext``."""
        holders = sorted([self.id, *self._peers])
        # Shamir x-coordinates must be ≥ 1; ids start at 0.
        xs = [h + 1 for h in holders]
        rand = self._entropy.stream(b"shamir" + self._tag)
        b_sh = shamir.split(self._b, xs, self.threshold, rand)
        s_sh = shamir.split(_priv_bytes(self._s_sk), xs, self.threshold, rand)
        out = bytearray()
        for h, sb, ss in zip(holders, b_sh, s_sh, strict=True):
            if h == self.id:
                self._own = (sb, ss)
                continue
            plain = struct.pack(">II", self.id, h) + sb.to_bytes() + ss.to_bytes()
            # A (sender, receiver) nonce never repeats under a key that is fresh each round.
            nonce = struct.pack(">IIi", self.id, h, 0)
            out += _U32.pack(h) + self._channel(h).encrypt(nonce, plain, self.round_id)
        return bytes(out)

    def receive_shares(self, blob: bytes) -> None:
        step = 4 + _CT
        if len(blob) % step:
            raise SecAggError(f"client {self.id}: malformed share bundle")
        for i in range(0, len(blob), step):
            (sender,) = _U32.unpack_from(blob, i)
            if sender not in self._peers:
                raise SecAggError(f"client {self.id}: shares from non-neighbour {sender}")
            self._ciphertexts[sender] = blob[i + 4 : i + step]

    # -- round 3
    def mask(self, codes: np.ndarray) -> bytes:
        x = np.asarray(codes)
        if x.shape != (self.n,):
            raise SecAggError(f"client {self.id}: expected {self.n} codes, got shape {x.shape}")
        if x.size and (
            not np.issubdtype(x.dtype, np.integer) or x.min() < 0 or x.max() >= 1 << self.bits
        ):
            raise SecAggError(f"client {self.id}: codes must be integers in [0, 2**{self.bits})")
        if self._masked:
            # Two vectors under the same masks would reveal their difference.
            raise SecAggError(
                f"client {self.id}: already masked an input this round (masks are one-time)"
            )
        self._masked = True
        self.plain_code_bytes = len(pack_uint(x, self.bits))
        y = x.astype(np.uint64)
        y += prg(self._b, self.n, self.k)
        for v, (_c_pk, s_pk) in self._peers.items():
            seed = _hkdf(self._s_sk.exchange(s_pk), self.round_id, _pair_info(b"mask", self.id, v))
            if v > self.id:
                y += prg(seed, self.n, self.k)
            else:
                y -= prg(seed, self.n, self.k)  # uint64 wraps: still correct mod 2^k
        if self.k < 64:
            y &= np.uint64((1 << self.k) - 1)
        return pack_uint(y, self.k)

    # -- round 4
    def unmask_response(self, request: bytes) -> bytes:
        """Answer the server's (survivors, dropped) announcement with one share per neighbour:
        of b_u for survivors, of the mask key for dropped ones. Refuses a second request, a
        request where the sets overlap, and one that leaves fewer than ``threshold`` survivors."""
        if self._answered:
            raise SecAggError(f"client {self.id}: refuses a second unmasking request")
        self._answered = True
        survivors, dropped = _parse_request(request)
        if survivors & dropped or self.id not in survivors:
            raise SecAggError(f"client {self.id}: inconsistent unmasking request")
        local = (survivors | dropped) & ({self.id} | set(self._peers))
        if len(survivors & local) < self.threshold:
            raise SecAggError(
                f"client {self.id}: fewer than threshold={self.threshold} neighbours survived; "
                "refusing to reveal shares"
            )
        out = bytearray()
        for u in sorted(local):
            sb, ss = self._own if u == self.id else self._open(u)
            kind, share = (0, sb) if u in survivors else (1, ss)
            out += _RESP.pack(kind, u, share.to_bytes())
        return bytes(out)

    def _open(self, u: int) -> tuple[Share, Share]:
        ct = self._ciphertexts.get(u)
        if ct is None:
            raise SecAggError(f"client {self.id}: holds no shares from client {u}")
        try:
            plain = self._channel(u).decrypt(struct.pack(">IIi", u, self.id, 0), ct, self.round_id)
        except InvalidTag:
            raise SecAggError(
                f"client {self.id}: shares from client {u} fail authentication"
            ) from None
        if struct.unpack(">II", plain[:8]) != (u, self.id):
            raise SecAggError(f"client {self.id}: shares from client {u} are addressed wrongly")
        return (
            Share.from_bytes(plain[8 : 8 + SHARE_BYTES]),
            Share.from_bytes(plain[8 + SHARE_BYTES :]),
        )


def _ids(ids: Iterable[int]) -> bytes:
    ids = sorted(ids)
    return _U32.pack(len(ids)) + b"".join(_U32.pack(i) for i in ids)


def _parse_request(b: bytes) -> tuple[set[int], set[int]]:
    sets = []
    pos = 0
    for _ in range(2):
        if len(b) < pos + 4:
            raise SecAggError("malformed unmasking request")
        (cnt,) = _U32.unpack_from(b, pos)
        end = pos + 4 + 4 * cnt
        if len(b) < end:
            raise SecAggError("malformed unmasking request")
        sets.append({i for (i,) in _U32.iter_unpack(b[pos + 4 : end])})
        pos = end
    if pos != len(b):
        raise SecAggError("malformed unmasking request")
    return sets[0], sets[1]


# ----------------------------------------------------------------------------- the server
class SecAggServer:
    """The server's side: relays keys and encrypted shares, sums masked vectors and removes masks
    from the *aggregate*. ``transcript`` records every message it receives, ``(phase, client,
    bytes)``, so tests can check it never held an individual unmasked update."""

    def __init__(
        self, graph: dict[int, set[int]], round_id: bytes, k: int, vector_len: int, threshold: int
    ):
        self.graph = graph
        self.round_id = round_id
        self.k, self.n, self.threshold = k, vector_len, threshold
        self.transcript: list[tuple[str, int, bytes]] = []
        self.keys: dict[int, tuple[bytes, bytes]] = {}

    def receive(self, phase: str, client: int, blob: bytes) -> None:
        self.transcript.append((phase, client, bytes(blob)))

    def take_advert(self, client: int, blob: bytes) -> None:
        self.receive("advertise", client, blob)
        if len(blob) != _ADV.size:
            raise SecAggError(f"client {client}: malformed key advertisement")
        cid, c_pk, s_pk = _ADV.unpack(blob)
        if cid != client:
            raise SecAggError(f"client {client} advertised keys as client {cid}")
        self.keys[client] = (c_pk, s_pk)

    def roster_for(self, client: int) -> bytes:
        return b"".join(_ADV.pack(v, *self.keys[v]) for v in sorted(self.graph[client]))

    def route_shares(self, bundles: dict[int, bytes]) -> dict[int, bytes]:
        """Re-address each sender's envelopes to their receivers (ciphertexts pass unread)."""
        out: dict[int, bytearray] = {c: bytearray() for c in self.graph}
        step = 4 + _CT
        for u, blob in bundles.items():
            self.receive("shares", u, blob)
            if len(blob) != step * len(self.graph[u]):
                raise SecAggError(f"client {u}: share bundle has the wrong size")
            for i in range(0, len(blob), step):
                (v,) = _U32.unpack_from(blob, i)
                if v not in self.graph[u]:
                    raise SecAggError(f"client {u} addressed shares to non-neighbour {v}")
                out[v] += _U32.pack(u) + blob[i + 4 : i + step]
        return {v: bytes(b) for v, b in out.items()}

    def unmask_request(self, client: int, survivors: set[int], dropped: set[int]) -> bytes:
        local = self.graph[client] | {client}
        return _ids(survivors & local) + _ids(dropped & local)

    def aggregate(
        self, received: dict[int, bytes], responses: dict[int, bytes], dropped: set[int]
    ) -> tuple[np.ndarray, int]:
        """Sum the masked vectors, then strip the masks from the sum using the unmasking
        responses. Returns (sum mod 2ᵏ, number of dropped clients whose mask key was rebuilt)."""
        total = np.zeros(self.n, np.uint64)
        for u, blob in received.items():
            self.receive("masked", u, blob)
            total += unpack_uint(blob, self.n, self.k)
        shares: dict[tuple[int, int], list[Share]] = {}
        for v, blob in responses.items():
            self.receive("unmask", v, blob)
            if len(blob) % _RESP.size:
                raise SecAggError(f"client {v}: malformed unmasking response")
            for kind, u, sb in _RESP.iter_unpack(blob):
                want = 0 if u in received else 1
                if kind != want or u not in self.graph or (u != v and u not in self.graph[v]):
                    raise SecAggError(f"client {v}: unexpected share of client {u}")
                shares.setdefault((kind, u), []).append(Share.from_bytes(sb))

        def rebuild(kind: int, u: int, what: str) -> bytes:
            got = shares.get((kind, u), [])
            if len(got) < self.threshold:
                raise SecAggError(
                    f"cannot recover client {u}'s {what}: {len(got)} of its share holders "
                    f"answered, threshold is {self.threshold}"
                )
            return shamir.combine(got, self.threshold)

        for u in sorted(received):
            total -= prg(rebuild(0, u, "self-mask seed"), self.n, self.k)
        recovered = 0
        for u in sorted(dropped):
            if not self.graph[u] & received.keys():
                continue  # none of its pairwise masks is in the sum: its key stays secret
            recovered += 1
            sk = X25519PrivateKey.from_private_bytes(rebuild(1, u, "mask key"))
            if _pub_bytes(sk) != self.keys[u][1]:
                raise SecAggError(
                    f"client {u}'s reconstructed mask key does not match its public key"
                )
            for v in sorted(self.graph[u] & received.keys()):
                seed = _hkdf(
                    sk.exchange(X25519PublicKey.from_public_bytes(self.keys[v][1])),
                    self.round_id,
                    _pair_info(b"mask", u, v),
                )
                # Survivor v added PRG(s_uv) if u > v and subtracted it if u < v: undo that.
                if u > v:
                    total -= prg(seed, self.n, self.k)
                else:
                    total += prg(seed, self.n, self.k)
        if self.k < 64:
            total &= np.uint64((1 << self.k) - 1)
        return total, recovered


# ----------------------------------------------------------------------------- one round
class SecAggRound:
    """One round of secure aggregation among ``clients`` (distinct non-negative ids).

    Construction runs the two setup phases (key advertisement, share distribution) for all clients.
    Then each client calls :meth:`mask` on its integer codes (``vector_len`` values below
    2^``bits``) and uploads the returned bytes; the server calls :meth:`unmask_sum` with what
    arrived. ``neighbors=k`` selects SecAgg+ (a random k-regular masking graph; O(k) instead of O(n)
    key agreements and shares per client); ``threshold`` then counts within a neighbourhood (at
    most k+1). A common choice is a threshold just above half (of n, or of k+1). The modulus has
    ``bits`` + ⌈log₂ n⌉ (+ ``margin``) bits so that the sum never wraps, unless ``k`` sets it:
    then codes are residues mod 2ᵏ (``bits`` ≤ ``k``) and so is the sum (distributed DP).

    >>> rnd = SecAggRound(list(range(6)), threshold=3, bits=8, vector_len=4, seed=0, neighbors=2)
    >>> sorted(len(v) for v in rnd.server.graph.values())
    [2, 2, 2, 2, 2, 2]
    >>> up, down = rnd.setup_bytes()[0]
    >>> up == 68 + 2 * 102 and down == 2 * 68 + 2 * 102
    True
    """

    def __init__(
        self,
        clients: Iterable[int],
        *,
        threshold: int,
        bits: int,
        vector_len: int,
        seed: int | None = None,
        neighbors: int | None = None,
        margin: int = 0,
        k: int | None = None,
    ):
        ids = [int(c) for c in clients]
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= (1 << 32) - 1:
            raise ValueError("clients must be distinct non-negative 32-bit ids, at least one")
        ids.sort()
        if not 1 <= bits <= 62:
            raise ValueError(f"bits must be in 1..62, got {bits}")
        if vector_len < 0:
            raise ValueError("vector_len must be >= 0")
        self.clients = ids
        self.bits = bits
        # k given: the caller sized the modulus itself and its codes are residues mod 2^k whose sum
        # it reads mod 2^k (distributed DP's noisy codes); otherwise the sum must never wrap.
        self.k = modulus_bits(bits, len(ids), margin) if k is None else int(k)
        if self.k < bits:
            raise ValueError(f"a modulus of {self.k} bits cannot hold {bits}-bit codes")
        if self.k > 64:
            raise ValueError(f"modulus of {self.k} bits exceeds 64; use fewer code bits")
        self.vector_len = vector_len
        self.threshold = threshold
        entropy = _Entropy(seed)
        self.round_id = entropy.stream(b"round-id")(16)
        # The masking graph is public: the server picks it (here from the round's randomness).
        graph_seed = int.from_bytes(entropy.stream(b"graph")(16), "big")
        self.graph = neighbour_graph(ids, neighbors, np.random.default_rng(graph_seed))
        min_holders = min(len(v) for v in self.graph.values()) + 1
        if not 1 <= threshold <= min_holders:
            raise ValueError(
                f"threshold must be in 1..{min_holders} (a client's share holders), got {threshold}"
            )
        self.server = SecAggServer(self.graph, self.round_id, self.k, vector_len, threshold)
        self._parties = {
            c: SecAggClient(c, self.round_id, bits, self.k, vector_len, threshold, entropy)
            for c in ids
        }
        up = dict.fromkeys(ids, 0)
        down = dict.fromkeys(ids, 0)
        for c, p in self._parties.items():
            adv = p.advertise()
            up[c] += len(adv)
            self.server.take_advert(c, adv)
        for c, p in self._parties.items():
            roster = self.server.roster_for(c)
            down[c] += len(roster)
            p.receive_roster(roster)
        bundles = {c: p.share_keys() for c, p in self._parties.items()}
        for c, b in bundles.items():
            up[c] += len(b)
        for v, blob in self.server.route_shares(bundles).items():
            down[v] += len(blob)
            self._parties[v].receive_shares(blob)
        self._setup = {c: (up[c], down[c]) for c in ids}

    def setup_bytes(self) -> dict[int, tuple[int, int]]:
        """Per client (uplink, downlink) bytes of the key-advertisement and share-distribution
        phases: lengths of the serialized keys and encrypted share envelopes that were sent."""
        return dict(self._setup)

    def mask(self, client: int, codes: np.ndarray) -> bytes:
        """Client-side: the masked vector mod 2ᵏ, packed k bits a value. Its length is the
        client's uplink payload. One call per client per round."""
        if client not in self._parties:
            raise SecAggError(f"client {client} is not part of this round")
        return self._parties[client].mask(codes)

    def unmask_sum(
        self,
        received: dict[int, bytes],
        dropped: Iterable[int] = (),
        *,
        unmask_dropouts: Iterable[int] = (),
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Server-side: the exact integer sum (uint64) of the codes of the clients in
        ``received``. ``dropped`` are the round's clients whose masked vector did not arrive (every
        client of the round must be in exactly one of the two); ``unmask_dropouts`` are survivors
        that go silent in the unmasking phase (their input still counts). Raises
        :class:`SecAggError` when a needed secret has fewer than ``threshold`` answering holders.

        Measurements (all from lengths of real messages): setup, masked, plain-code and unmasking
        bytes, ``secagg_overhead_bytes`` (everything secure aggregation added over uploading the
        plain packed codes) and ``secagg_client_extra_bytes`` per client (uplink, downlink)."""
        received = {int(c): bytes(b) for c, b in received.items()}
        dropped = {int(c) for c in dropped}
        silent = {int(c) for c in unmask_dropouts}
        every = set(self.clients)
        if received.keys() & dropped or (received.keys() | dropped) != every:
            raise ValueError(
                "every client of the round must be either received or dropped, not both"
            )
        if not silent <= received.keys():
            raise ValueError("unmask_dropouts must be clients whose vector was received")
        survivors = set(received)
        responders = sorted(survivors - silent)
        if len(survivors) < self.threshold:
            raise SecAggError(
                f"only {len(survivors)} clients survived; threshold is {self.threshold}"
            )
        responses: dict[int, bytes] = {}
        unmask = {c: (0, 0) for c in self.clients}
        for v in responders:
            req = self.server.unmask_request(v, survivors, dropped)
            resp = self._parties[v].unmask_response(req)
            responses[v] = resp
            unmask[v] = (len(resp), len(req))
        total, recovered = self.server.aggregate(received, responses, dropped)
        masked = sum(len(b) for b in received.values())
        plain = sum(self._parties[c].plain_code_bytes for c in received)
        s_up = sum(u for u, _ in self._setup.values())
        s_down = sum(d for _, d in self._setup.values())
        u_up = sum(u for u, _ in unmask.values())
        u_down = sum(d for _, d in unmask.values())
        extra = {}
        for c in self.clients:
            up, down = self._setup[c]
            payload = len(received[c]) - self._parties[c].plain_code_bytes if c in received else 0
            extra[c] = (up + payload + unmask[c][0], down + unmask[c][1])
        meas = {
            "secagg_clients": len(self.clients),
            "secagg_survivors": len(survivors),
            "secagg_dropped": len(dropped),
            "secagg_unmask_dropouts": len(silent),
            "secagg_recovered_keys": recovered,
            "secagg_threshold": self.threshold,
            "secagg_modulus_bits": self.k,
            "secagg_code_bits": self.bits,
            "secagg_degree": min(len(v) for v in self.graph.values()),
            "secagg_setup_uplink_bytes": s_up,
            "secagg_setup_downlink_bytes": s_down,
            "secagg_masked_bytes": masked,
            "secagg_plain_code_bytes": plain,
            "secagg_unmask_uplink_bytes": u_up,
            "secagg_unmask_downlink_bytes": u_down,
            "secagg_overhead_bytes": s_up + s_down + (masked - plain) + u_up + u_down,
            "secagg_client_extra_bytes": extra,
        }
        return total, meas
