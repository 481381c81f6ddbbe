"""Law 5 under fire: mutated blobs may only ever raise ``fedpress.WireError``.

``FEDPRESS_FUZZ_N`` sets how many mutated blobs are decoded (default 100 000; ``make fuzz`` runs a
million) and ``FEDPRESS_FUZZ_SEED`` the mutation stream. Most mutations are followed by
recomputing the CRC32 trailer, so they reach the parsers behind the checksum: header, structure,
field table, zstd framing and every codec's payload decoder. Field-level mutations rebuild a
well-formed envelope around damaged fields (optionally zstd-packed), so payload decoders see lies
that no checksum or framing check can catch.

Decoding runs under tight :class:`fedpress.Limits` (a mutated shape can legitimately describe up
to ``max_elements`` values), a per-blob watchdog against hangs, and a sampled tracemalloc check
against allocations out of proportion to those limits.
"""

from __future__ import annotations

import collections
import math
import os
import signal
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import torch

import fedpress
from fedpress import Limits, Structure, WireError
from fedpress.wire.format import TensorSpec, read_blob, write_blob

FUZZ_N = int(float(os.environ.get("FEDPRESS_FUZZ_N", "100000")))
FUZZ_SEED = int(os.environ.get("FEDPRESS_FUZZ_SEED", "20240601"))
LIMITS = Limits(max_elements=1 << 22, max_body_bytes=1 << 26, max_tensors=1 << 12)
#: a decode may not allocate more than this (numpy arrays included, via tracemalloc)
PEAK_BYTES = 64 * LIMITS.max_elements + (16 << 20)
WATCHDOG_S = 30.0  # per blob; a healthy decode of these blobs takes milliseconds

SPECS = [
    "none", "fp16", "bf16", "none+zstd",
    "fixed:bits=4,lo=-2,hi=2", "fixed:bits=8,rounding=stochastic+zstd",
    "q:bits=8", "q:bits=3,block=16", "q:bits=5,block=7,mode=absmax+zstd", "q:bits=4,target=0.1",
    "q:bits=1,block=0,stochastic=1",
    "qsgd:levels=16", "qsgd:levels=3,block=8+zstd", "qsgd:levels=127,block=0",
    "sign", "sign:block=8", "ternary", "ternary:block=5+zstd",
    "topk:ratio=0.1", "topk:ratio=0.6", "topk:ratio=0.05+q:bits=8+zstd",
    "randk:ratio=0.2,unbiased=1+fp16", "randk:ratio=1",
    "threshold:tau=0.5+qsgd:levels=3", "threshold:tau=0",
    "svd:rank=2,min_size=0", "svd:rank=3,min_size=0+q:bits=6+zstd",
    "powersgd:rank=2,min_size=0+q:bits=8", "powersgd:rank=1,min_size=0+bf16",
    "ef+topk:ratio=0.05+q:bits=4+zstd", "topk:ratio=0.5+randk:ratio=0.5+ternary",
    "q:bits=3,block=16+ans", "qsgd:levels=16+ans", "ternary:block=5+ans", "none+ans",
    "ef+topk:ratio=0.05+q:bits=4+ans",
    "rht", "rht:block=8+sign", "rht:block=16+q:bits=2+zstd", "rht+qsgd:levels=4,block=8",
    "ef+rht:block=32+ternary+ans",
    "sketch:cols=20", "sketch:cols=8,rows=3,k=10+q:bits=8+zstd", "ef+sketch:ratio=0.1,rows=2,est=mean+q:bits=4",
    "topk:ratio=0.1+q:bits=4+zstd; *.bias=none; numel<100=sign",
    "pq:dim=4,centroids=16", "ef+pq:dim=3,centroids=7+q:bits=8+ans", "qsgd:levels=8+ans; conv.*=ef+rht+q:bits=2",
]


class Hang(Exception):
    pass


def _inputs():
    g = torch.Generator().manual_seed(0)
    sd = {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g), "conv.bias": torch.randn(8, generator=g),
        "fc.weight": torch.randn(10, 72, generator=g), "fc.bias": torch.randn(10, generator=g, dtype=torch.float64),
        "steps": torch.tensor(5), "keep": torch.tensor([True, False]),
        "h": torch.randn(4, 4, generator=g).half(), "bb": torch.randn(3, generator=g).bfloat16(),
        "e": torch.zeros(0, 3), "s": torch.tensor(0.25),
    }
    x = np.random.default_rng(0).normal(size=(20, 30)).astype(np.float32)
    return sd, x


def build_corpus():
    """(blob, decode kwargs, parsed) for many specs, containers, structure modes and masks."""
    sd, x = _inputs()
    corpus = []
    for i, spec in enumerate(SPECS):
        for obj in (sd, x):
            corpus.append((fedpress.compress(obj, spec, seed=i), {}))
    st_sd = Structure.of(sd)
    for spec in ("q:bits=4", "topk:ratio=0.2+q:bits=8+zstd", "none"):
        corpus.append((fedpress.compress(sd, spec, structure="fingerprint"), {"structures": [st_sd]}))
        corpus.append((fedpress.compress(x, spec, structure="fingerprint"), {"structures": [Structure.of(x)]}))
    for spec in ("qsgd:levels=4+zstd", "sign"):
        corpus.append((fedpress.codec(spec).encode_ex(sd, spec_ref=True).blob, {"specs": [spec, "q:bits=8"]}))
    masks = {"fc.weight": np.random.default_rng(1).random(720) < 0.3, "conv.bias": np.arange(8) % 2 == 0}
    for spec in ("topk:ratio=0.2+q:bits=8", "qsgd:levels=4+zstd", "none", "svd:rank=2,min_size=0"):
        corpus.append((fedpress.compress(sd, spec, masks=masks), {"masks": masks}))
    out = []
    for blob, kw in corpus:
        p = read_blob(blob, structures=kw.get("structures"), specs=kw.get("specs"))
        out.append((blob, kw, p))
    return out


def _crc(content: bytes) -> bytes:
    return content + struct.pack("<I", zlib.crc32(content))


INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0x3F, 0x40]


def mutate(rng: np.random.Generator, corpus, i: int):
    """One mutated blob: (bytes, decode kwargs, kind)."""
    blob, kw, p = corpus[i]
    content = bytearray(blob[:-4])
    kind = int(rng.integers(12))
    fix_crc = rng.random() < 0.8
    if kind == 0:  # truncate
        content = content[: int(rng.integers(len(content) + 1))]
    elif kind == 1:  # bit flips
        for _ in range(int(rng.integers(1, 9))):
            j = int(rng.integers(len(content)))
            content[j] ^= 1 << int(rng.integers(8))
    elif kind == 2:  # interesting / random byte values
        for _ in range(int(rng.integers(1, 5))):
            j = int(rng.integers(len(content)))
            content[j] = INTERESTING[int(rng.integers(len(INTERESTING)))] if rng.random() < 0.5 else int(rng.integers(256))
    elif kind == 3:  # header region: spec, seed, structure, field table
        head = min(len(content), 48 + len(p.spec) + 16 * len(p.structure.tensors))
        for _ in range(int(rng.integers(1, 4))):
            j = int(rng.integers(head))
            content[j] = int(rng.integers(256)) if rng.random() < 0.6 else content[j] ^ (1 << int(rng.integers(8)))
    elif kind == 4:  # insert bytes
        j = int(rng.integers(len(content) + 1))
        content[j:j] = rng.bytes(int(rng.integers(1, 17)))
    elif kind == 5:  # delete a range
        j = int(rng.integers(len(content)))
        del content[j : j + int(rng.integers(1, 17))]
    elif kind == 6:  # splice two blobs
        other = corpus[int(rng.integers(len(corpus)))][0][:-4]
        content = content[: int(rng.integers(len(content) + 1))] + other[int(rng.integers(len(other) + 1)) :]
    elif kind == 7:  # random bytes behind a valid magic and version
        content = bytearray(b"FP\x01" + rng.bytes(int(rng.integers(0, 200))))
    elif kind in (8, 9):  # well-formed envelope around damaged fields
        fields = [bytes(f) for f in p.fields]
        if fields:
            j = int(rng.integers(len(fields)))
            f = bytearray(fields[j])
            op = int(rng.integers(5))
            if op == 0 and f:
                f[int(rng.integers(len(f)))] ^= 1 << int(rng.integers(8))
            elif op == 1:
                f = f[: int(rng.integers(len(f) + 1))]
            elif op == 2:
                f += rng.bytes(int(rng.integers(1, 9)))
            elif op == 3:
                f = bytearray(rng.bytes(len(f)))
            else:
                f = bytearray([INTERESTING[int(rng.integers(len(INTERESTING)))]] * len(f))
            fields[j] = bytes(f)
            if rng.random() < 0.2 and len(fields) > 1:  # drop, duplicate or swap fields
                a, b = (int(v) for v in rng.integers(len(fields), size=2))
                fields[a], fields[b] = fields[b], fields[a]
        zl = 3 if rng.random() < 0.4 else None
        # ans specs get their damaged fields ans-coded again (when not zstd-packed): the field
        # decoders then see lies from behind a well-formed ans body.
        new, _ = write_blob(p.spec, p.seed, p.structure, fields, by_fingerprint="structures" in kw,
                            zstd_level=zl, ans=zl is None and p.spec.endswith("+ans"),
                            mask_digest=p.mask_digest, spec_ref="specs" in kw)
        return new, kw, kind
    elif kind == 10:  # another blob's spec (and maybe structure) over these fields
        _, _, q = corpus[int(rng.integers(len(corpus)))]
        structure = q.structure if rng.random() < 0.5 else p.structure
        new, _ = write_blob(q.spec, p.seed, structure, [bytes(f) for f in p.fields],
                            zstd_level=3 if rng.random() < 0.3 else None)
        return new, {}, kind
    else:  # repeat a chunk
        j = int(rng.integers(len(content)))
        ln = int(rng.integers(1, 33))
        content[j:j] = content[j : j + ln]
    if fix_crc:
        return _crc(bytes(content)), kw, kind
    return bytes(content) + blob[-4:], kw, kind


def _on_alarm(signum, frame):
    raise Hang()


def test_fuzz_decompress_raises_only_wire_error():
    corpus = build_corpus()
    for blob, kw, _ in corpus:  # every seed blob decodes as it is
        fedpress.decompress(blob, limits=LIMITS, **kw)
    rng = np.random.default_rng(FUZZ_SEED)
    use_alarm = hasattr(signal, "setitimer")
    if use_alarm:
        old = signal.signal(signal.SIGALRM, _on_alarm)
    failures: list[tuple[str, str, bytes]] = []
    stats = collections.Counter()
    decoded = 0
    max_peak = 0
    t0 = time.perf_counter()
    try:
        for it in range(FUZZ_N):
            i = int(rng.integers(len(corpus)))
            blob, kw, kind = mutate(rng, corpus, i)
            stats[kind] += 1
            sample = it % 500 == 0
            if sample:
                tracemalloc.start()
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
            try:
                out = fedpress.decompress(blob, limits=LIMITS, **kw)
                decoded += 1
                vals = out.values() if isinstance(out, dict) else [out]
                assert sum(int(np.prod(v.shape)) for v in vals) <= LIMITS.max_elements
            except WireError:
                pass
            except Hang:
                failures.append(("hang", f"no result after {WATCHDOG_S}s", blob))
            except Exception as e:  # anything else is the bug this test exists to find
                failures.append((type(e).__name__, str(e)[:200], blob))
            finally:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                if sample:
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                    max_peak = max(max_peak, peak)
                    if peak > PEAK_BYTES:
                        failures.append(("allocation", f"peak {peak} bytes > {PEAK_BYTES}", blob))
            if len(failures) >= 20:
                break
    finally:
        if use_alarm:
            signal.signal(signal.SIGALRM, old)
    elapsed = time.perf_counter() - t0
    n = sum(stats.values())
    print(f"\nfuzz: {n} mutated blobs in {elapsed:.1f}s ({n / elapsed:.0f}/s), {decoded} still decoded, "
          f"{len(failures)} non-WireError outcomes; kinds {dict(sorted(stats.items()))}; "
          f"max sampled peak allocation {max_peak / 1024:.0f} KiB")
    assert not failures, "\n".join(f"{k}: {m}\n  blob: {b.hex()}" for k, m, b in failures[:5])
    assert n == FUZZ_N


@pytest.mark.parametrize("limits", [None, LIMITS])
def test_fuzz_random_garbage(limits):
    """Pure noise, of every short length, with and without a valid prefix and checksum."""
    rng = np.random.default_rng(FUZZ_SEED + 1)
    for n in range(0, 64):
        for _ in range(20):
            raw = rng.bytes(n)
            for blob in (raw, _crc(raw), _crc(b"FP\x01" + raw)):
                with pytest.raises(WireError):
                    fedpress.decompress(blob, limits=limits)


@pytest.mark.parametrize("spec", SPECS)
def test_lying_shapes_never_allocate_beyond_limits(spec):
    """A tiny blob that declares a huge tensor: rejected before allocating when over the limit,
    and never allocating out of proportion to the limit when just under it."""
    _, x = _inputs()
    p = read_blob(fedpress.compress(x, spec, seed=1))
    fields = [bytes(f) for f in p.fields]
    # A count sketch of fixed size (sketch:cols=C) holds R×C values whatever the tensor's size, so
    # the same fields under a larger declared shape are a valid blob, not a lie: it may decode,
    # within the limits (it must still stay within the memory bound).
    c = fedpress.codec(spec)
    any_size = any(s.name == "sketch" and s.cols for p in c.pipelines for s in p.stages)
    for n, over in [(LIMITS.max_elements + 1, True), (LIMITS.max_elements, False),
                    (LIMITS.max_elements // 600, False)]:
        for shape in [(n,), (n // 600, 600) if n >= 600 else (n, 1)]:
            if math.prod(shape) > LIMITS.max_elements and not over:
                continue
            blob, _ = write_blob(spec, 1, Structure((TensorSpec("", "float32", shape),), False), fields)
            tracemalloc.start()
            try:
                try:
                    out = fedpress.decompress(blob, limits=LIMITS)
                except WireError:
                    out = None
                assert out is None or (any_size and math.prod(shape) <= LIMITS.max_elements), (spec, shape)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            limit = (1 << 20) if math.prod(shape) > LIMITS.max_elements else PEAK_BYTES
            assert peak <= limit, (spec, shape, peak)
