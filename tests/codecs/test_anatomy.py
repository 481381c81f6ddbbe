"""fedpress.inspect_blob: the per-tensor byte breakdown is of the blob's real fields."""

import numpy as np
import pytest
import torch

import fedpress
from fedpress import Structure, WireError
from fedpress.wire.format import read_blob


def update():
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(16, 3, 3, 3, generator=g), "conv.bias": torch.randn(16, generator=g),
            "fc.weight": torch.randn(10, 400, generator=g), "fc.bias": torch.randn(10, generator=g),
            "steps": torch.tensor(3)}


@pytest.mark.parametrize("spec", ["q:bits=8", "ef+topk:ratio=0.05+q:bits=4+zstd; numel<500=q:bits=8; *.bias=none",
                                  "qsgd:levels=8+ans; fc.*=pq:dim=4,centroids=16"])
def test_fields_add_up_to_the_blob(spec):
    sd = update()
    blob = fedpress.compress(sd, spec, seed=2)
    info = fedpress.inspect_blob(blob)
    p = read_blob(blob)
    assert [t.name for t in info.tensors] == list(sd)
    assert sum(t.fields for t in info.tensors) == len(p.fields)
    assert info.payload_bytes == sum(len(f) for f in p.fields)
    assert info.total_bytes == len(blob) == info.envelope_bytes + info.body_bytes
    c = fedpress.codec(spec)
    for t in info.tensors:
        if t.dtype.startswith("float"):
            assert t.pipeline == "+".join(str(s) for s in c.pipeline_for(t.name, t.shape).stages)
        else:
            assert t.pipeline == "raw" and t.payload_bytes == 8
    if info.lossless is None:  # no entropy stage: the body is the field table plus the fields
        assert info.body_bytes > info.payload_bytes
    # a tensor's payload is what the same pipeline writes for that tensor alone
    one = read_blob(fedpress.compress({"fc.bias": sd["fc.bias"]}, "q:bits=8"))
    if spec == "q:bits=8":
        assert next(t for t in info.tensors if t.name == "fc.bias").payload_bytes == sum(map(len, one.fields))


def test_raw_rule_tensors_cost_their_raw_bytes_and_zstd_shrinks_the_body():
    sd = {"w": torch.zeros(5000), "b": torch.randn(7)}
    info = fedpress.inspect_blob(fedpress.compress(sd, "q:bits=4+zstd; b=none"))
    assert info.lossless == "zstd"
    assert [t.payload_bytes for t in info.tensors][1] == 28
    assert info.body_bytes < info.payload_bytes  # 2 500 bytes of equal codes compress


def test_agreed_structures_and_specs_and_bad_bytes():
    sd = update()
    c = fedpress.codec("q:bits=8")
    blob = c.encode_ex(sd, structure="fingerprint", spec_ref=True).blob
    with pytest.raises(WireError, match="fingerprint|digest"):
        fedpress.inspect_blob(blob)
    info = fedpress.inspect_blob(blob, structures=Structure.of(sd), specs=[c.spec])
    assert info.structure_by_fingerprint and info.spec_by_digest
    assert info.envelope_bytes < fedpress.inspect_blob(fedpress.compress(sd, "q:bits=8")).envelope_bytes
    with pytest.raises(WireError):
        fedpress.inspect_blob(b"FP\x01garbage")
    bad = bytearray(fedpress.compress(np.ones(10, np.float32), "q:bits=8"))
    bad[-6] ^= 0xFF
    with pytest.raises(WireError, match="checksum"):
        fedpress.inspect_blob(bytes(bad))
