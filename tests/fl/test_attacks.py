"""Byzantine attacks: parsing, what each does to an update, and who attacks."""

import pytest
import torch

from fedpress.fl.attacks import make_attack


def test_each_attack_corrupts_the_update_as_documented():
    u = {"w": torch.tensor([1.0, -2.0, 0.5]), "b": torch.zeros(0)}
    assert make_attack("signflip").apply(u, 0)["w"].tolist() == [-1.0, 2.0, -0.5]
    assert make_attack("scale:factor=3").apply(u, 0)["w"].tolist() == [3.0, -6.0, 1.5]
    n1, n2 = (make_attack("noise:std=2").apply(u, s)["w"] for s in (1, 2))
    assert n1.shape == (3,) and not torch.equal(n1, n2)
    assert torch.equal(n1, make_attack("noise:std=2").apply(u, 1)["w"])  # a pure function of the seed
    assert u["w"].tolist() == [1.0, -2.0, 0.5]  # the honest update is left as it was
    assert make_attack("signflip").apply(u, 0)["b"].shape == (0,)


def test_attackers_are_a_seeded_fraction():
    a = make_attack("signflip:fraction=0.25")
    assert len(a.attackers(8, 0)) == 2 and len(a.attackers(10, 0)) == 3  # ceil
    assert a.attackers(100, 0) == a.attackers(100, 0) != a.attackers(100, 1)
    assert all(0 <= c < 100 for c in a.attackers(100, 0))


@pytest.mark.parametrize("bad,match", [
    ("flip", "expected signflip"), ("signflip:fraction=0", r"fraction must be in \(0, 1\)"),
    ("scale:factor=x", "factor must be a number"), ("noise:std=0", "std must be > 0"),
    ("signflip:factor=2", "unexpected 'factor=2'"), ("noise:std=inf", "must be finite"),
])
def test_bad_specs_name_the_bad_part(bad, match):
    with pytest.raises(ValueError, match=match):
        make_attack(bad)
    assert make_attack(None) is None and make_attack("none") is None
