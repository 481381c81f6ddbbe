import pytest
import torch

from fedpress.fl.pruning import PruneSchedule, magnitude_masks, sparsity_of


def _params():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(20, 30, generator=g), "b.weight": torch.randn(10, 10, generator=g) * 5,
            "a.bias": torch.randn(20, generator=g)}


def test_global_sparsity_hits_target_and_skips_biases():
    p = _params()
    m = magnitude_masks(p, sparsity=0.9)
    assert set(m) == {"a.weight", "b.weight"}
    kept = sum(int(v.sum()) for v in m.values())
    assert abs(kept - 0.1 * 700) <= 1
    # Global: the larger-scale layer keeps a larger share than the smaller one.
    assert m["b.weight"].float().mean() > m["a.weight"].float().mean()


def test_layer_scope_prunes_each_layer_equally():
    m = magnitude_masks(_params(), sparsity=0.5, scope="layer")
    for v in m.values():
        assert abs(v.float().mean().item() - 0.5) < 0.02


def test_tau_and_monotone_masks():
    p = _params()
    m = magnitude_masks(p, tau=1.0)
    assert all(torch.equal(m[k], p[k].abs() >= 1.0) for k in m)
    p2 = {k: v.clone() for k, v in p.items()}
    p2["a.weight"][~m["a.weight"]] = 100.0  # pruned weights that grew back stay pruned
    m2 = magnitude_masks(p2, sparsity=0.1, old=m)
    assert not torch.any(m2["a.weight"] & ~m["a.weight"])


def test_gradual_schedule_is_cubic_and_reaches_target():
    s = PruneSchedule(sparsity=0.8, mode="gradual", start=2, end=6)
    vals = [s.target_at(r) for r in range(8)]
    assert vals[0] is None and vals[7] is None
    assert vals[2] == 0.0 and vals[6] == pytest.approx(0.8)
    assert all(vals[i] < vals[i + 1] for i in range(2, 6))


def test_sparsity_of_counts_zeros():
    assert sparsity_of({"w": torch.tensor([[0.0, 1.0], [0.0, 0.0]]), "b": torch.zeros(3)}) == 0.75


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        magnitude_masks(_params())
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(_params(), sparsity=0.5, scope="row")
