import dataclasses

import numpy as np
import pytest
import torch

from fedpress.data import (
    DEFAULT_SCENARIO,
    SCENARIOS,
    Scenario,
    ScenarioData,
    compute_metric,
    get_scenario,
    list_scenarios,
)
from fedpress.data.synthetic import IOT_SENSORS, IOT_WINDOW, generate_fraud

BUILTIN = ["digits", "healthcare", "fraud", "iot"]
EXPECTED = {  # name: (sample shape, n_classes, metric)
    "digits": ((1, 8, 8), 10, "accuracy"),
    "healthcare": ((30,), 2, "auroc"),
    "fraud": ((18,), 2, "auprc"),
    "iot": ((len(IOT_SENSORS) * IOT_WINDOW,), 2, "f1"),
}


@pytest.fixture(scope="module")
def loaded():
    return {name: get_scenario(name).load(seed=0) for name in BUILTIN}


def test_registry_lists_every_scenario_with_help():
    names = list_scenarios()
    assert names[0] == DEFAULT_SCENARIO == "digits"
    assert set(names) == set(SCENARIOS) >= {*BUILTIN, "mnist", "fashion-mnist", "cifar10"}
    for name in names:
        sc = get_scenario(name)
        assert sc.name == name and sc.help and "\n" not in sc.help
        assert 1 <= sc.per_round <= sc.clients and sc.rounds > 0 and sc.lr > 0
        # Synthetic data must say so where users look.
        assert ("SYNTHETIC" in sc.help) == sc.synthetic


def test_get_scenario_normalises_and_rejects():
    assert get_scenario("FASHION_MNIST") is SCENARIOS["fashion-mnist"]
    assert get_scenario(" Digits ") is SCENARIOS["digits"]
    with pytest.raises(ValueError, match="unknown scenario 'nope'.*digits"):
        get_scenario("nope")


def test_scenario_rejects_bad_defaults_and_is_hashable():
    sc = get_scenario("digits")
    assert hash(sc) == hash(dataclasses.replace(sc))
    with pytest.raises(ValueError, match="metric"):
        dataclasses.replace(sc, metric="loss")
    with pytest.raises(ValueError, match="per_round"):
        dataclasses.replace(sc, per_round=sc.clients + 1)
    with pytest.raises(NotImplementedError):
        dataclasses.replace(sc, loader=None).load()


@pytest.mark.parametrize("name", BUILTIN)
def test_shapes_dtypes_and_labels(loaded, name):
    d, sc = loaded[name], get_scenario(name)
    shape, n_classes, metric = EXPECTED[name]
    assert sc.metric == metric and d.n_classes == n_classes
    assert d.input_shape == shape
    assert d.x_train.dtype == d.x_test.dtype == torch.float32
    assert d.y_train.dtype == d.y_test.dtype == torch.int64
    assert d.n_train > d.n_test > 0
    assert torch.isfinite(d.x_train).all() and torch.isfinite(d.x_test).all()
    for y in (d.y_train, d.y_test):
        assert set(y.unique().tolist()) == set(range(n_classes))  # every class in both splits
    if sc.partition == "natural":
        assert d.groups is not None and d.groups.shape == (d.n_train,)
        assert d.groups.min() == 0 and len(np.unique(d.groups)) == sc.clients
    assert d.description


@pytest.mark.parametrize("name", BUILTIN)
def test_deterministic_by_seed(loaded, name):
    sc = get_scenario(name)
    a, b, c = loaded[name], sc.load(seed=0), sc.load(seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    if a.groups is not None:
        assert np.array_equal(a.groups, b.groups)
    assert a.x_train.shape[1:] == c.x_train.shape[1:]
    assert not (a.x_train.shape == c.x_train.shape and torch.equal(a.x_train, c.x_train))


@pytest.mark.parametrize("name", BUILTIN)
def test_build_model_fits_data(loaded, name):
    d = loaded[name]
    torch.manual_seed(0)
    out = get_scenario(name).build_model(d)(d.x_test[:7])
    assert out.shape == (7, d.n_classes)


def test_build_model_cnn_on_digits(loaded):
    sc = dataclasses.replace(get_scenario("digits"), model="cnn", model_kwargs={})
    assert sc.build_model(loaded["digits"])(loaded["digits"].x_test[:3]).shape == (3, 10)
    flat = dataclasses.replace(loaded["digits"], x_train=loaded["digits"].x_train.flatten(1))
    with pytest.raises(ValueError, match="square"):
        sc.build_model(flat)


def test_validate_catches_contract_violations(loaded):
    d = loaded["healthcare"]
    with pytest.raises(ValueError, match="float32"):
        dataclasses.replace(d, x_train=d.x_train.double()).validate()
    with pytest.raises(ValueError, match="labels must lie"):
        dataclasses.replace(d, n_classes=1).validate()
    with pytest.raises(ValueError, match="groups"):
        dataclasses.replace(d, groups=d.groups[:-1]).validate()
    assert isinstance(d.validate(), ScenarioData)


def test_digits_split_is_stratified_75_25(loaded):
    d = loaded["digits"]
    assert d.n_train + d.n_test == 1797
    assert abs(d.n_test / 1797 - 0.25) < 0.01
    assert float(d.x_train.min()) >= 0.0 and float(d.x_train.max()) <= 1.0
    tr = np.bincount(d.y_train.numpy()) / d.n_train
    te = np.bincount(d.y_test.numpy()) / d.n_test
    assert np.abs(tr - te).max() < 0.01


def test_digits_centralized_sanity(loaded, one_thread):
    # The scenario's model and optimiser settings must be able to learn the task at all; FedAvg
    # accuracy targets are checked end-to-end elsewhere.
    d, sc = loaded["digits"], get_scenario("digits")
    torch.manual_seed(0)
    model = sc.build_model(d)
    opt = torch.optim.SGD(model.parameters(), lr=sc.lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        for idx in torch.randperm(d.n_train, generator=gen).split(sc.batch_size):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(d.x_train[idx]), d.y_train[idx]).backward()
            opt.step()
    with torch.no_grad():
        probs = torch.softmax(model(d.x_test), 1).numpy()
    assert compute_metric("accuracy", probs, d.y_test.numpy()) > 0.9


def test_healthcare_hospitals_have_quantity_and_label_skew(loaded):
    d = loaded["healthcare"]
    y = d.y_train.numpy()
    sizes = np.bincount(d.groups)
    prevalence = np.array([y[d.groups == h].mean() for h in range(len(sizes))])
    assert sizes.max() >= 2 * sizes.min()
    assert prevalence.max() - prevalence.min() > 0.2
    assert ((prevalence > 0) & (prevalence < 1)).all()  # both classes at every hospital
    # Standardised with training statistics: train columns are ~N(0, 1), test only close to it.
    assert torch.allclose(d.x_train.mean(0), torch.zeros(30), atol=1e-4)
    assert torch.allclose(d.x_train.std(0, unbiased=False), torch.ones(30), atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fraud_positive_rate_is_one_to_two_percent(seed):
    d = get_scenario("fraud").load(seed=seed)
    x, y, bank = generate_fraud(seed=seed)
    assert 20_000 <= len(y) <= 40_000
    assert 0.01 <= y.mean() <= 0.02
    per_bank = np.array([y[bank == b].mean() for b in range(bank.max() + 1)])
    assert per_bank.min() > 0 and per_bank.std() > 0  # rates differ between banks
    assert 0.01 <= float(d.y_train.float().mean()) <= 0.02
    assert 0.01 <= float(d.y_test.float().mean()) <= 0.02


def test_fraud_banks_differ_in_features(loaded):
    from scipy.stats import f_oneway

    d = loaded["fraud"]
    x, g = d.x_train.numpy(), d.groups
    legit = d.y_train.numpy() == 0  # compare customer bases, not fraud mixes
    banks = range(g.max() + 1)
    # One-way ANOVA: if banks shared one distribution, p-values this small would not occur.
    for col in (0, 1, 11):  # log_amount, hour_sin (time zone), online
        p = f_oneway(*[x[(g == b) & legit, col] for b in banks]).pvalue
        assert p < 1e-10, (col, p)
    sizes = np.bincount(g)
    assert sizes.max() >= 2 * sizes.min()  # quantity skew


def test_fraud_label_is_learnable_from_features(loaded):
    d = loaded["fraud"]
    y = d.y_train.numpy().astype(bool)
    # Frauds have larger amounts relative to the cardholder's average (last column).
    assert d.x_train[y, -1].mean() > d.x_train[~y, -1].mean() + 0.5


def test_iot_devices_and_degradation_before_failure(loaded):
    d = loaded["iot"]
    assert len(np.unique(d.groups)) >= 100
    x = d.x_train.numpy().reshape(d.n_train, len(IOT_SENSORS), IOT_WINDOW)
    y = d.y_train.numpy().astype(bool)
    assert 0.03 < y.mean() < 0.25
    vib = x[:, IOT_SENSORS.index("vibration")]
    q = IOT_WINDOW // 4
    trend = vib[:, -q:].mean(1) - vib[:, :q].mean(1)  # rising within the window
    assert trend[y].mean() > trend[~y].mean() + 0.3
    assert vib[y].mean() > vib[~y].mean() + 0.5
    assert vib[y].std(1).mean() > vib[~y].std(1).mean()  # a worn device rattles more
    # Per-device drift: device baselines of temperature differ far beyond within-device noise.
    temp = x[~y, IOT_SENSORS.index("temperature")].mean(1)
    dev_means = np.array([temp[d.groups[~y] == k].mean() for k in np.unique(d.groups[~y])])
    assert dev_means.std() > 0.3


def test_scenario_is_a_frozen_dataclass():
    sc = get_scenario("iot")
    assert isinstance(sc, Scenario)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sc.rounds = 3
