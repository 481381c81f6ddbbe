"""Per-tensor rules: ``DEFAULT; SELECTOR[,SELECTOR]=PIPELINE; ...`` (fedpress.codecs.spec.parse_rules).

The parse errors and the five laws on rule specs are in tests/conformance; here: which tensor gets
which pipeline, that each tensor decodes exactly as its own pipeline would encode it, state,
entropy coding across pipelines, agreed structures, and the places that need one pipeline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_strategies import spec_strategy as _spec_strategy

import fedpress
from fedpress.codecs.combine import Codec
from fedpress.codecs.feedback import residual_key
from fedpress.codecs.spec import Selector, parse_rules
from fedpress.privacy.codes import SharedRangeCodec, secagg_compatible
from fedpress.wire.format import Structure, read_blob


def model_update(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(16, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(16, generator=g),
        "bn.weight": torch.randn(16, generator=g),
        "bn.running_var": torch.rand(16, generator=g) + 0.5,
        "bn.num_batches_tracked": torch.tensor(12),
        "fc.weight": torch.randn(10, 400, generator=g),
        "fc.bias": torch.randn(10, generator=g, dtype=torch.float64),
    }


def test_selectors_match_as_documented():
    assert Selector("glob", "*.bias").matches("fc.bias", (10,))
    assert not Selector("glob", "*.bias").matches("fc.weight", (10, 4))
    assert Selector("glob", "fc.*").matches("fc.weight", (10, 4))
    assert not Selector("glob", "FC.*").matches("fc.weight", (10, 4))  # names are case-sensitive
    assert Selector("numel", 40).matches("x", (10, 3)) and not Selector("numel", 30).matches("x", (10, 3))
    assert Selector("numel", 2).matches("x", ())  # a 0-d tensor holds one value
    assert Selector("ndim", 2).matches("x", (5,)) and not Selector("ndim", 2).matches("x", (5, 1))


def test_first_matching_rule_wins_else_default():
    c = fedpress.codec("q:bits=4; fc.*=q:bits=8; *.bias,numel<100=none; conv.*=sign")
    by_name = {n: c.pipeline_for(n, tuple(v.shape)) for n, v in model_update().items()}
    assert [s.name for s in by_name["fc.weight"].stages] == ["q"]
    assert by_name["fc.weight"].stages[0].bits == 8
    assert by_name["fc.bias"].stages[0].bits == 8  # fc.* comes before *.bias
    assert by_name["conv.bias"].raw and by_name["bn.weight"].raw  # *.bias / numel<100
    assert by_name["conv.weight"].stages[0].name == "sign"
    c2 = fedpress.codec("q:bits=4; conv.*=sign")
    assert c2.pipeline_for("bn.weight", (16,)) is c2.default


@pytest.mark.parametrize("spec", [
    "ef+topk:ratio=0.05+q:bits=4+zstd; conv.*=qsgd:levels=4; *.bias,ndim<2=none",
    "qsgd:levels=8+ans; fc.*=ef+sign; numel<20=randk:ratio=0.5,unbiased=1",
    "rht+q:bits=2; fc.weight=powersgd:rank=2,min_size=0+q:bits=8; bn.*=fp16",
])
def test_each_tensor_decodes_as_its_own_pipeline_encodes_it(spec):
    """Per tensor, the routed blob decodes to what the rule's pipeline alone produces for the same
    input and seed (stochastic stages included: a tensor's draws depend on its index, not on the
    pipeline of its neighbours), and the reconstruction returned by encode is what decodes."""
    c = fedpress.codec(spec)
    sd = model_update(1)
    enc = c.encode_ex(sd, c.init(), seed=5)
    out = fedpress.decompress(enc.blob)
    assert list(out) == list(sd)
    for name, v in sd.items():
        pl = c.pipeline_for(name, tuple(v.shape))
        if not v.is_floating_point() or pl.raw:
            assert out[name].dtype == v.dtype and torch.equal(out[name], v), name
            continue
        alone = fedpress.codec("+".join(str(s) for s in pl.stages))
        ref = fedpress.decompress(alone.encode_ex(sd, alone.init(), seed=5).blob)[name]
        assert torch.equal(out[name], ref), name
        assert torch.equal(enc.recon[name], out[name]), name


def test_rules_change_only_the_fields_of_the_tensors_they_take():
    """The weight's fields are byte for byte those of the default pipeline; the bias travels as
    its own raw bytes (one field), and nothing else is added to the payload."""
    sd = {"w": torch.randn(200, 300), "b": torch.randn(300)}
    base = read_blob(fedpress.compress(sd, "topk:ratio=0.01+q:bits=8"))
    routed = read_blob(fedpress.compress(sd, "topk:ratio=0.01+q:bits=8; b=none"))
    w_only = read_blob(fedpress.compress({"w": sd["w"]}, "topk:ratio=0.01+q:bits=8"))
    nw = len(w_only.fields)
    assert [bytes(f) for f in routed.fields[:nw]] == [bytes(f) for f in base.fields[:nw]]
    assert len(routed.fields) == nw + 1 and len(base.fields) > nw + 1
    assert bytes(routed.fields[nw]) == sd["b"].numpy().astype("<f4").tobytes()
    assert torch.equal(fedpress.decompress(fedpress.compress(sd, "topk:ratio=0.01+q:bits=8; b=none"))["b"], sd["b"])


def test_error_feedback_state_only_for_tensors_with_ef():
    c = fedpress.codec("ef+topk:ratio=0.1+q:bits=8; *.bias=none; fc.*=q:bits=4")
    sd = model_update(2)
    blob, state = c.encode(sd, c.init(), seed=1)
    assert set(state) == {residual_key("conv.weight"), residual_key("bn.weight"), residual_key("bn.running_var")}
    # the residual is exactly what the server did not see, and is added back next round
    out = fedpress.decompress(blob)
    x = sd["conv.weight"].numpy()
    np.testing.assert_array_equal(state[residual_key("conv.weight")], x - out["conv.weight"].numpy())
    blob2, state2 = c.encode(sd, state, seed=2)
    out2 = fedpress.decompress(blob2)
    x2 = x + state[residual_key("conv.weight")]
    np.testing.assert_allclose(state2[residual_key("conv.weight")], x2 - out2["conv.weight"].numpy(), atol=0)


def test_entropy_stage_codes_every_pipeline_and_agreed_structures_route_the_same():
    sd = {k: v for k, v in model_update(3).items() if v.is_floating_point()}
    spec = "q:bits=3+zstd; conv.*=sign; *.bias=q:bits=8"
    c = fedpress.codec(spec)
    full = c.encode_ex(sd, seed=4)
    fp = c.encode_ex(sd, seed=4, structure="fingerprint", spec_ref=True)
    assert len(fp.blob) < len(full.blob)
    out = fedpress.decompress(fp.blob, structures=Structure.of(sd), specs=[c.spec])
    ref = fedpress.decompress(full.blob)
    for k in sd:
        assert torch.equal(out[k], ref[k]), k
    assert read_blob(full.blob).spec == c.spec
    # zstd codes the whole body, the fields of a rule's tensors included: 16 000 raw zero bytes
    # sent by a `none` rule shrink to almost nothing
    sd["pad.bias"] = torch.zeros(4000)
    raw = fedpress.compress(sd, "q:bits=3; conv.*=sign; *.bias=none", seed=4)
    zs = fedpress.compress(sd, "q:bits=3+zstd; conv.*=sign; *.bias=none", seed=4)
    assert len(raw) - len(zs) > 15000
    assert torch.equal(fedpress.decompress(zs)["pad.bias"], sd["pad.bias"])


def test_codec_properties_span_every_pipeline():
    assert fedpress.codec("qsgd:levels=4; *.bias=none; fc.*=ternary").unbiased
    assert not fedpress.codec("qsgd:levels=4; *.bias=ef+sign").unbiased
    assert fedpress.codec("q:bits=8; conv.*=ef+sign").error_feedback
    assert fedpress.codec("q:bits=8; conv.*=ef+powersgd:rank=2").stateful
    assert not fedpress.codec("q:bits=8; conv.*=fp16").stateful
    assert fedpress.codec("q:bits=8; conv.*=topk:ratio=0.1").sparse
    assert not fedpress.codec("q:bits=8; *.bias=none").sparse
    assert fedpress.codec("none; *.bias=fp16").raw is False
    assert fedpress.codec("none; *.bias=none").raw
    # deterministic pipelines store seed 0; one stochastic rule makes the seed travel
    x = {"w": torch.randn(50), "b": torch.randn(5)}
    assert read_blob(fedpress.compress(x, "q:bits=4; b=fp16", seed=9)).seed == 0
    assert read_blob(fedpress.compress(x, "q:bits=4; b=qsgd:levels=2", seed=9)).seed == 9


def test_canonical_spec_round_trips_through_the_blob_and_parse():
    spec = " EF+topk:ratio=0.01+q:bits=8 ; *.bias , numel<1024 = none ;fc.*=q:bits=4"
    c = Codec(spec)
    assert c.spec == "ef+topk:ratio=0.01+q:bits=8; *.bias,numel<1024=none; fc.*=q:bits=4"
    d, rules = parse_rules(c.spec)
    assert [str(r) for r in rules] == ["*.bias,numel<1024=none", "fc.*=q:bits=4"]
    assert Codec(c.spec).spec == c.spec
    assert fedpress.codec("q:bits=8").spec == "q:bits=8"  # no rules: the spec is unchanged


def test_places_that_need_one_pipeline_say_so():
    ok, why = secagg_compatible("q:bits=8; *.bias=none")
    assert not ok and "per-tensor rules" in why
    with pytest.raises(ValueError, match="per-tensor rules"):
        SharedRangeCodec("q:bits=8; *.bias=none")
    with pytest.raises(fedpress.SpecError, match="only a single pipeline"):
        fedpress.codecs.parse_spec("q:bits=8; *.bias=none")


_NAMES = ["conv.weight", "conv.bias", "fc.weight", "fc.bias", "emb", "x"]
_SELECTORS = st.one_of(st.sampled_from(["*.bias", "conv.*", "fc.weight", "*", "e?b", "[cf]*", "nothing"]),
                       st.builds(lambda n: f"numel<{n}", st.integers(1, 400)),
                       st.builds(lambda n: f"ndim<{n}", st.integers(1, 4)))


def _pipelines():
    return st.tuples(st.booleans(), _spec_strategy()).map(lambda t: ("ef+" if t[0] and t[1] != "none" else "") + t[1])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(default=_pipelines(), lossless=st.sampled_from(["", "+zstd", "+ans"]),
       rules=st.lists(st.tuples(st.lists(_SELECTORS, min_size=1, max_size=3), _pipelines()), max_size=3),
       shapes=st.lists(st.sampled_from([(), (0,), (7,), (16, 3), (4, 5, 6), (33,)]), min_size=len(_NAMES),
                       max_size=len(_NAMES)),
       seed=st.integers(0, 2**32))
def test_any_rule_spec_decodes_each_tensor_as_its_own_pipeline(default, lossless, rules, shapes, seed):
    spec = default + lossless + "".join(f"; {','.join(sels)}={pipe}" for sels, pipe in rules)
    c = fedpress.codec(spec)
    assert fedpress.codec(c.spec).spec == c.spec  # canonical form parses back to itself
    g = np.random.default_rng(seed)
    sd = {n: g.normal(size=s).astype(np.float32) for n, s in zip(_NAMES, shapes, strict=True)}
    enc = c.encode_ex(sd, c.init(), seed=seed)
    out = fedpress.decompress(enc.blob)
    assert list(out) == _NAMES
    for n, x in sd.items():
        pl = c.pipeline_for(n, x.shape)
        # the same pipeline alone (a lossless stage changes how codes are stored, not their values)
        alone = fedpress.codec("+".join(str(s) for s in pl.stages))
        ref = fedpress.decompress(alone.encode_ex(sd, alone.init(), seed=seed).blob)[n]
        np.testing.assert_array_equal(out[n], ref, err_msg=n)
        np.testing.assert_array_equal(enc.recon[n], out[n], err_msg=n)


def test_specs_a_blob_cannot_carry_are_refused_when_made():
    rules = "; ".join(f"layer{i}.block{i}.attention.weight=q:bits={1 + i % 8}" for i in range(40))
    with pytest.raises(fedpress.SpecError, match="more than a blob may carry"):
        fedpress.codec("q:bits=4; " + rules)
    fedpress.codec("q:bits=4; " + rules[:900].rsplit(";", 1)[0])  # under the limit: fine


def test_globs_are_compiled_per_selector_not_in_fnmatchs_global_cache():
    """Blobs from untrusted clients carry specs: each new glob used to stay in fnmatch's cache of up
    to 32 768 patterns after its Codec was gone."""
    import fnmatch

    before = fnmatch._compile_pattern.cache_info().currsize
    for i in range(50):
        c = Codec(f"q:bits=4; x{i}.*=none")
        assert c.pipeline_for(f"x{i}.w", (3,)).raw and not c.pipeline_for("y.w", (3,)).raw
    assert fnmatch._compile_pattern.cache_info().currsize == before


def test_digest_blobs_decode_with_the_spec_as_written():
    sd = {"w": torch.randn(30), "fc.bias": torch.randn(4)}
    c = fedpress.codec("q:bits=4;fc.*=none")
    blob = c.encode_ex(sd, spec_ref=True).blob
    out = fedpress.decompress(blob, specs=["Q:bits=4 ;  fc.* = none"])
    assert torch.equal(out["fc.bias"], sd["fc.bias"])
