import pytest
import torch

from fedpress.models import MODELS, cnn, count_params, logreg, make_model, mlp


@pytest.mark.parametrize(
    ("name", "kw", "x_shape"),
    [
        ("logreg", {"in_dim": 30, "n_classes": 2}, (5, 30)),
        ("mlp", {"in_dim": 64, "n_classes": 10}, (5, 1, 8, 8)),
        ("mlp", {"in_dim": 96, "n_classes": 2, "hidden": (16, 8)}, (5, 96)),
        ("cnn", {"in_channels": 1, "n_classes": 10, "image_size": 8}, (5, 1, 8, 8)),
        ("cnn", {"in_channels": 1, "n_classes": 10, "image_size": 28}, (5, 1, 28, 28)),
        ("cnn", {"in_channels": 3, "n_classes": 10, "image_size": 32}, (5, 3, 32, 32)),
        ("cnn", {"in_channels": 2, "n_classes": 4, "image_size": 4}, (5, 2, 4, 4)),
    ],
)
def test_output_shapes(name, kw, x_shape):
    model = make_model(name, **kw)
    out = model(torch.randn(*x_shape))
    assert out.shape == (x_shape[0], kw["n_classes"])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_init_is_deterministic_given_seed(name):
    kw = (
        {"in_channels": 1, "n_classes": 10, "image_size": 8}
        if name == "cnn"
        else {"in_dim": 64, "n_classes": 10}
    )
    torch.manual_seed(7)
    a = make_model(name, **kw).state_dict()
    torch.manual_seed(7)
    b = make_model(name, **kw).state_dict()
    torch.manual_seed(8)
    c = make_model(name, **kw).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_cnn_size_is_tens_of_thousands_for_every_dataset():
    for c, s in [(1, 8), (1, 28), (3, 32)]:
        n = count_params(cnn(c, 10, s))
        assert 10_000 <= n < 100_000, (c, s, n)


def test_mlp_param_count_matches_architecture():
    # 64*32+32 + 32*10+10
    assert count_params(mlp(64, 10, hidden=(32,))) == 64 * 32 + 32 + 32 * 10 + 10
    assert count_params(mlp(5, 3, hidden=())) == count_params(logreg(5, 3)) == 18


def test_unknown_model_is_a_clear_value_error():
    with pytest.raises(ValueError, match="unknown model 'vit'.*cnn, logreg, mlp"):
        make_model("vit", in_dim=3, n_classes=2)


def test_bad_arguments_name_the_model():
    with pytest.raises(ValueError, match="make_model\\('mlp'\\)"):
        make_model("mlp", in_dim=3, n_classes=2, width=9)
    with pytest.raises(ValueError, match="n_classes"):
        logreg(4, 0)
    with pytest.raises(ValueError, match="hidden widths"):
        mlp(4, 2, hidden=(0,))
    with pytest.raises(ValueError, match="image_size"):
        cnn(1, 10, 1)
