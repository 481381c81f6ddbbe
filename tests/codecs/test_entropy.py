"""The lossless stages in pipelines: ``ans`` next to ``zstd`` and next to no entropy stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedpress
from fedpress import SpecError
from fedpress.privacy.codes import secagg_compatible
from fedpress.wire.format import FLAG_ANS, read_blob


def _many_small() -> dict:
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(25):
        sd[f"layer{i}.weight"] = torch.randn(7, 5, generator=g)
        sd[f"layer{i}.bias"] = torch.randn(5, generator=g)
    sd["steps"] = torch.tensor(3)
    sd["keep"] = torch.tensor([True, False])
    sd["half"] = torch.randn(9, generator=g).half()
    sd["np"] = np.random.default_rng(1).normal(size=(6, 6)).astype(np.float32)
    return sd


INPUTS = {
    "numpy": np.random.default_rng(0).normal(size=6000).astype(np.float32),
    "torch2d": torch.randn(80, 70, generator=torch.Generator().manual_seed(1)),
    "state_dict": _many_small(),
    "constant": np.full((50, 40), 0.25, np.float32),  # every code the same: single-symbol fields
    "tiny": np.array([0.5, -1.0, 2.0], np.float32),
    "scalar": torch.tensor(1.5),
    "empty": np.zeros((3, 0), np.float32),
    "empty_dict": {},
}
SPECS = [
    "q:bits=3",
    "q:bits=4",
    "q:bits=1",
    "q:bits=7,block=64",
    "qsgd:levels=16",
    "ternary",
    "sign",
    "ef+topk:ratio=0.01+q:bits=4",
    "topk:ratio=0.1+q:bits=5",
    "fixed:bits=5,lo=-2,hi=2",
    "fp16",
    "none",
]


def _equal(a, b):
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _equal(a[k], b[k])
        return
    assert type(a) is type(b) and a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("spec", SPECS)
def test_ans_decodes_exactly_what_the_plain_spec_decodes(spec):
    for name, obj in INPUTS.items():
        plain = fedpress.compress(obj, spec, seed=3)
        coded = fedpress.compress(obj, spec + "+ans", seed=3)
        _equal(fedpress.decompress(plain), fedpress.decompress(coded))
        _equal(
            fedpress.decompress(fedpress.compress(obj, spec + "+zstd", seed=3)),
            fedpress.decompress(coded),
        )
        # never larger than the plain spec but for the stage's name in the header and at most
        # 1.5 bytes per field (a mode nibble; a length varint that may count bytes, not packed bits)
        nf = len(read_blob(plain).fields)
        assert len(coded) <= len(plain) + len("+ans") + (3 * nf + 1) // 2, (spec, name)


def test_ans_beats_zstd_on_quantiser_codes():
    x = np.random.default_rng(0).normal(size=1_000_000).astype(np.float32)
    for spec in ("q:bits=3", "qsgd:levels=16"):
        plain = len(fedpress.compress(x, spec, seed=1))
        zstd = len(fedpress.compress(x, spec + "+zstd", seed=1))
        coded = fedpress.compress(x, spec + "+ans", seed=1)
        assert coded[3] & FLAG_ANS
        assert len(coded) < zstd and len(coded) < plain, spec
    # q:bits=3's codes: within 1 % of their order-0 entropy (plus the block ranges, 64 bits/256)
    codes = np.frombuffer(read_blob(fedpress.compress(x, "q:bits=3+zstd")).fields[-1], np.uint8)
    p = np.bincount(codes) / codes.size
    p = p[p > 0]
    entropy_bits = -(p * np.log2(p)).sum() + 64 / 256
    assert 8 * len(fedpress.compress(x, "q:bits=3+ans")) / x.size < 1.01 * entropy_bits


def test_same_seed_same_bytes():
    x = torch.randn(3000, generator=torch.Generator().manual_seed(2))
    for spec in ("qsgd:levels=16+ans", "ef+topk:ratio=0.01+q:bits=4+ans", "ternary+ans"):
        a, b = fedpress.compress(x, spec, seed=9), fedpress.compress(x, spec, seed=9)
        assert a == b
    assert fedpress.compress(x, "qsgd:levels=16+ans", seed=1) != fedpress.compress(
        x, "qsgd:levels=16+ans", seed=2
    )


def test_codec_state_and_plumbing():
    c = fedpress.codec("ef+topk:ratio=0.1+q:bits=3+ans")
    assert c.lossless == "ans" and c.entropy_follows and c.zstd_level is None
    z = fedpress.codec("q:bits=3+zstd:level=7")
    assert z.lossless == "zstd" and z.entropy_follows and z.zstd_level == 7
    assert not fedpress.codec("q:bits=3").entropy_follows and fedpress.codec("ans").raw
    x = np.random.default_rng(3).normal(size=(30, 40)).astype(np.float32)
    state = c.init()
    for _ in range(3):  # multi-round with error feedback: recon is what the server decodes
        enc = c.encode_ex(x, state, seed=0)
        np.testing.assert_array_equal(enc.recon, fedpress.decompress(enc.blob))
        state = enc.state


def test_spec_rules():
    assert fedpress.codec(" Q:bits=3 + ANS ").spec == "q:bits=3+ans"
    assert "ans" in fedpress.codecs.registry()
    with pytest.raises(SpecError, match="must come last"):
        fedpress.codec("ans+q:bits=3")
    with pytest.raises(SpecError, match="must come last"):
        fedpress.codec("q:bits=3+ans+zstd")
    with pytest.raises(SpecError, match="no parameter"):
        fedpress.codec("q:bits=3+ans:level=3")


def test_refused_under_secure_aggregation():
    ok, why = secagg_compatible("fixed:bits=8,lo=-1,hi=1,rounding=stochastic+ans")
    assert not ok and "do not compress" in why
