import numpy as np
import pytest
import torch

import fedpress
from fedpress.fl.aggregators import DecodingFactory, MeanFactory, SumFactory


def test_weighted_mean_streams_and_matches_numpy():
    rng = np.random.default_rng(0)
    ups = [{"a": torch.tensor(rng.normal(size=(3, 4)), dtype=torch.float32)} for _ in range(5)]
    w = [1.0, 2.0, 0.5, 4.0, 3.0]
    p = MeanFactory().create()
    for u, wi in zip(ups, w, strict=True):
        p.accept(u, wi)
    mean, meas = p.result()
    want = sum(wi * u["a"].double() for u, wi in zip(ups, w, strict=True)) / sum(w)
    assert torch.allclose(mean["a"].double(), want, atol=1e-6)
    assert meas["clients_aggregated"] == 5
    # Streaming: the process keeps one running sum, not the updates.
    assert list(vars(p)) == ["sums", "total", "count"]


def test_empty_round_returns_none():
    mean, meas = MeanFactory().create().result()
    assert mean is None and meas["clients_aggregated"] == 0


def test_mismatched_keys_rejected():
    p = MeanFactory().create()
    p.accept({"a": torch.zeros(2)})
    with pytest.raises(ValueError, match="keys differ"):
        p.accept({"b": torch.zeros(2)})


def test_decoding_factory_counts_real_bytes_and_decodes():
    blobs = [fedpress.compress({"w": torch.full((100,), float(i))}, "q:bits=8") for i in range(3)]
    p = DecodingFactory(SumFactory()).create()
    for b in blobs:
        p.accept(b)
    total, meas = p.result()
    assert meas["decoded_bytes"] == sum(len(b) for b in blobs)
    assert torch.allclose(total["w"], torch.full((100,), 3.0), atol=1e-5)


def test_decoding_factory_rejects_garbage_with_wire_error():
    p = DecodingFactory(MeanFactory()).create()
    with pytest.raises(fedpress.WireError):
        p.accept(b"not a blob at all")


def test_sparse_mean_averages_each_coordinate_over_its_senders():
    from fedpress.fl.aggregators import SparseMeanFactory

    p = SparseMeanFactory().create()
    p.accept({"w": torch.tensor([2.0, 0.0, 0.0, 1.0])}, weight=1.0)
    p.accept({"w": torch.tensor([4.0, 6.0, 0.0, 0.0])}, weight=3.0)
    out, meas = p.result()
    assert out["w"].tolist() == [3.5, 6.0, 0.0, 1.0]
    assert meas["clients_aggregated"] == 2
    plain = MeanFactory().create()
    plain.accept({"w": torch.tensor([2.0, 0.0, 0.0, 1.0])}, weight=1.0)
    plain.accept({"w": torch.tensor([4.0, 6.0, 0.0, 0.0])}, weight=3.0)
    assert plain.result()[0]["w"].tolist() == [3.5, 4.5, 0.0, 0.25]


def test_robust_rules_match_numpy_and_scipy():
    from scipy.stats import trim_mean

    from fedpress.fl.aggregators import make_aggregator

    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 8):
        vals = rng.normal(size=(n, 3, 4)).astype(np.float32)
        for spec, want in [("median", np.median(vals, axis=0)),
                           ("trimmed_mean:beta=0.2", trim_mean(vals, 0.2, axis=0)),
                           ("majority", np.sign(np.sign(vals).sum(0)) * np.abs(vals).mean(0))]:
            p = make_aggregator(spec).create()
            for v in vals:
                p.accept({"w": torch.from_numpy(v), "e": torch.zeros(0)}, weight=1.0)
            out, meas = p.result()
            assert out["w"].shape == (3, 4) and out["e"].shape == (0,)
            assert np.allclose(out["w"].numpy(), want, atol=1e-6), (spec, n)
            assert meas["clients_aggregated"] == n
    assert make_aggregator("median").create().result()[0] is None  # nobody came
    for bad in ("bulyan", "median:beta=0.1", "trimmed_mean:beta=x", "trimmed_mean:beta=0.6", "krum:f=1.5",
                "krum:m=0", "krum:beta=1"):
        with pytest.raises(ValueError, match="bad aggregate"):
            make_aggregator(bad)


def test_sparse_median_is_the_median_of_each_coordinates_senders():
    from fedpress.fl.aggregators import make_aggregator

    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 6):
        vals = rng.normal(size=(n, 50)).astype(np.float32) * (rng.random((n, 50)) < 0.4)
        p = make_aggregator("sparse_median").create()
        for v in vals:
            p.accept({"w": torch.from_numpy(v)})
        got = p.result()[0]["w"].numpy()
        want = [np.median(c[c != 0]) if (c != 0).any() else 0.0 for c in vals.T]
        assert np.allclose(got, want, atol=1e-6), n


def test_krum_picks_the_update_closest_to_its_neighbours():
    from fedpress.fl.aggregators import make_aggregator

    rng = np.random.default_rng(2)
    honest = rng.normal(size=(6, 20)).astype(np.float32) * 0.1 + 1.0
    bad = np.full((2, 20), -30.0, np.float32)
    p = make_aggregator("krum:f=2").create()
    for v in np.concatenate([bad[:1], honest, bad[1:]]):
        p.accept({"w": torch.from_numpy(v.reshape(4, 5))})
    out, meas = p.result()
    assert out["w"].shape == (4, 5) and meas["krum_selected"] == 1
    assert any(np.array_equal(out["w"].numpy().ravel(), h) for h in honest)  # one honest update, as is
    p = make_aggregator("krum:f=2,m=4").create()
    for v in np.concatenate([bad, honest]):
        p.accept({"w": torch.from_numpy(v)})
    out, meas = p.result()
    assert meas["krum_selected"] == 4 and abs(float(out["w"].mean()) - 1.0) < 0.1


def test_norm_clip_bounds_each_update_by_the_median_norm_and_keeps_sparsity():
    from fedpress.fl.aggregators import make_aggregator

    ups = [np.array([3.0, 0, 0, 4.0]), np.array([0, 1.0, 0, 0]), np.array([0, 0, 2.0, 0]),
           np.array([-300.0, 0, 0, 400.0])]  # norms 5, 1, 2, 500: median (lower middle) 2
    p = make_aggregator("norm_clip").create()
    for u, w in zip(ups, (1.0, 1.0, 2.0, 1.0), strict=True):
        p.accept({"w": torch.tensor(u, dtype=torch.float32).reshape(2, 2)}, weight=w)
    out, meas = p.result()
    want = (np.array(ups[0]) * 2 / 5 + ups[1] + 2 * ups[2] + np.array(ups[3]) * 2 / 500) / 5
    assert np.allclose(out["w"].numpy().ravel(), want, atol=1e-6)
    assert meas["clients_clipped"] == 2 and out["w"].shape == (2, 2)
    q = make_aggregator("norm_clip:factor=1e9").create()  # nothing clipped: the weighted mean
    for u in ups[:3]:
        q.accept({"w": torch.tensor(u, dtype=torch.float32)})
    assert np.allclose(q.result()[0]["w"].numpy(), np.mean(ups[:3], axis=0))
    with pytest.raises(ValueError, match="factor must be > 0"):
        make_aggregator("norm_clip:factor=0")


def test_sparse_mean_limited_to_the_tensors_a_rule_sparsifies():
    """With per-tensor rules only some tensors are top-k'd: a dense code with exact zeros (ternary
    here) must get the plain mean, not be divided by the few clients whose value was non-zero."""
    import fedpress
    from fedpress.fl.aggregators import auto_aggregator

    c = fedpress.codec("ef+topk:ratio=0.1+q:bits=8; *.bias=ternary")
    name, fac = auto_aggregator([c], private=False)
    assert name == "sparse_mean"
    p = fac.create()
    p.accept({"w": torch.tensor([[1.0, 0.0]]), "x.bias": torch.tensor([2.0, 0.0])}, weight=1.0)
    p.accept({"w": torch.tensor([[3.0, 0.0]]), "x.bias": torch.tensor([0.0, 0.0])}, weight=1.0)
    out = p.result()[0]
    assert out["w"].tolist() == [[2.0, 0.0]]  # over its senders
    assert out["x.bias"].tolist() == [1.0, 0.0]  # the plain mean
    assert auto_aggregator([fedpress.codec("q:bits=8; *.bias=none")], private=False)[0] == "mean"
    assert auto_aggregator([c], private=True)[0] == "mean"
