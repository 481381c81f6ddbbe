"""SYNTHETIC scenarios: card-fraud transactions across banks and sensor windows from IoT devices.

Nothing here is real data. The generators are small, documented stochastic models chosen so that
the federated difficulties are present — rare positives, per-client feature shift, quantity skew,
hundreds of tiny clients — while a run stays quick. Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import numpy as np

from fedpress.data.base import ScenarioData, standardize, to_data

__all__ = [
    "FRAUD_FEATURES",
    "IOT_SENSORS",
    "MERCHANTS",
    "generate_fraud",
    "generate_iot",
    "load_fraud",
    "load_iot",
]

# ----------------------------------------------------------------------------------------- fraud

MERCHANTS = (
    "grocery",
    "fuel",
    "restaurant",
    "retail",
    "travel",
    "electronics",
    "digital_services",
    "gift_cards",
)
FRAUD_FEATURES = (
    "log_amount",
    "hour_sin",
    "hour_cos",
    *(f"merchant_{m}" for m in MERCHANTS),
    "online",
    "card_present",
    "foreign",
    "log_distance_km",
    "tx_last_1h",
    "tx_last_24h",
    "log_amount_over_avg",
)
# Columns that are z-scored; the one-hot and flag columns stay 0/1 so they keep their meaning.
_FRAUD_CONTINUOUS = np.array(
    [
        FRAUD_FEATURES.index(c)
        for c in (
            "log_amount",
            "hour_sin",
            "hour_cos",
            "log_distance_km",
            "tx_last_1h",
            "tx_last_24h",
            "log_amount_over_avg",
        )
    ]
)
_LEGIT_MIX = np.array([0.30, 0.12, 0.18, 0.22, 0.04, 0.05, 0.07, 0.02])
_FRAUD_MIX = np.array([0.06, 0.04, 0.05, 0.15, 0.16, 0.24, 0.15, 0.15])


def generate_fraud(
    n: int = 30_000, n_banks: int = 8, fraud_rate: float = 0.015, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate SYNTHETIC card transactions: ``(x, y, bank)`` with raw (unscaled) features.

    Columns are :data:`FRAUD_FEATURES`. Generative story, per bank ``b``:

    - size: quantity skew, ``n_b ∝ 1 + 4·B·Dir(2)`` over the ``B`` banks; fraud rate ``fraud_rate·m_b`` with
      ``m_b ~ U(0.6, 1.4)`` renormalised so the overall rate is exactly ``fraud_rate`` (±rounding);
    - feature shift: a customer base with its own typical amount (log-mean shift ~N(0, 0.35)),
      time zone (−3..+3 h), merchant mix (Dirichlet around a base mix), online share (20–55 %)
      and activity level (expected daily transactions 1.5–5);
    - fraud differs from legitimate use in distribution, not by rule: larger amounts relative to
      the cardholder's average, more night-time, online, foreign, far-from-home and burst
      (velocity) transactions, more electronics/gift cards/travel. A third of frauds are
      "stealthy" and copy legitimate behaviour except for a mild amount shift, which keeps AUPRC
      well below 1.

    >>> x, y, bank = generate_fraud(n=2_000, n_banks=4, seed=3)
    >>> x.shape, y.dtype, sorted(set(bank.tolist()))
    ((2000, 18), dtype('int64'), [0, 1, 2, 3])
    >>> int(y.sum())  # 1.5 % of 2,000
    30
    """
    rng = np.random.default_rng([seed, 0xF4A0D])
    # Sizes: a floor of 1 share each, plus a Dirichlet-distributed remainder (quantity skew).
    share = 1.0 + 4.0 * n_banks * rng.dirichlet(np.full(n_banks, 2.0))
    sizes = np.floor(share / share.sum() * n).astype(np.int64)
    sizes[: n - sizes.sum()] += 1
    mult = rng.uniform(0.6, 1.4, size=n_banks)
    mult /= (mult * sizes).sum() / n  # size-weighted mean multiplier = 1 → exact overall rate
    # Largest-remainder rounding: per-bank counts that sum exactly to the overall target.
    quota = fraud_rate * mult * sizes
    n_fraud = np.floor(quota).astype(np.int64)
    short = int(round(fraud_rate * n)) - int(n_fraud.sum())
    n_fraud[np.argsort(n_fraud - quota)[:short]] += 1

    xs, ys, banks = [], [], []
    for b in range(n_banks):
        nb, fb = int(sizes[b]), int(n_fraud[b])
        y = np.zeros(nb, dtype=np.int64)
        y[rng.choice(nb, size=fb, replace=False)] = 1
        xs.append(_fraud_rows(y, rng))
        ys.append(y)
        banks.append(np.full(nb, b, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(banks)


def _fraud_rows(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Features for one bank's transactions given their labels (bank traits drawn here)."""
    n = len(y)
    fraud = y == 1
    loud = fraud & (rng.random(n) < 2 / 3)  # the other third are "stealthy" frauds
    # Bank traits (the feature shift between clients).
    amount_mu = np.log(40.0) + rng.normal(0.0, 0.35)
    tz = rng.integers(-3, 4)
    mix = rng.dirichlet(40.0 * _LEGIT_MIX)
    online_share = rng.uniform(0.20, 0.55)
    daily = rng.uniform(1.5, 5.0)

    # Cardholder's usual spend, and this transaction relative to it.
    ratio = rng.normal(0.0, 0.5, n) + np.where(fraud, 0.35, 0.0) + np.where(loud, 0.9, 0.0)
    log_amount = amount_mu + rng.normal(0.0, 0.8, n) + ratio

    hour = (rng.normal(14.0, 4.0, n) + tz) % 24.0
    night = loud & (rng.random(n) < 0.45)
    hour[night] = rng.uniform(0.0, 6.0, night.sum())
    angle = 2 * np.pi * hour / 24.0

    merchant = np.where(
        loud,
        rng.choice(len(MERCHANTS), size=n, p=_FRAUD_MIX),
        rng.choice(len(MERCHANTS), size=n, p=mix),
    )
    onehot = np.eye(len(MERCHANTS))[merchant]

    online = rng.random(n) < np.where(loud, 0.70, online_share)
    card_present = ~online & (rng.random(n) < 0.97)  # a few keyed-in offline payments
    foreign = rng.random(n) < np.where(loud, 0.18, 0.03)
    log_dist = np.log1p(np.exp(rng.normal(np.where(loud, 3.0, 1.6), 1.2, n)))
    tx_1h = rng.poisson(np.where(loud, 1.4, 0.25))
    tx_24h = tx_1h + rng.poisson(np.where(loud, daily + 3.0, daily))
    return np.column_stack(
        [
            log_amount,
            np.sin(angle),
            np.cos(angle),
            onehot,
            online,
            card_present,
            foreign,
            log_dist,
            tx_1h,
            tx_24h,
            ratio,
        ]
    ).astype(np.float64)


def load_fraud(seed: int = 0, data_root: str | None = None) -> ScenarioData:
    """SYNTHETIC card fraud: 30,000 transactions at 8 banks, 1.5 % fraud, ``groups`` = bank.

    80/20 split stratified by (bank, label), so every bank keeps its share of frauds in both
    splits. Continuous columns are z-scored with training statistics; 0/1 columns are kept.

    >>> d = load_fraud(seed=0)
    >>> d.input_shape, d.n_classes, int(d.groups.max()) + 1
    ((18,), 2, 8)
    """
    from sklearn.model_selection import train_test_split

    x, y, bank = generate_fraud(seed=seed)
    idx_tr, idx_te = train_test_split(
        np.arange(len(y)), test_size=0.2, stratify=bank * 2 + y, random_state=seed
    )
    x_tr, x_te = standardize(x[idx_tr], x[idx_te], _FRAUD_CONTINUOUS)
    return to_data(
        x_tr,
        y[idx_tr],
        x_te,
        y[idx_te],
        n_classes=2,
        groups=bank[idx_tr],
        description=(
            "SYNTHETIC card transactions (not real data): 18 tabular features, ~1.5% fraud, "
            "8 banks with different customer bases (feature shift) and sizes"
        ),
    )


# ------------------------------------------------------------------------------------------- iot

IOT_SENSORS = ("temperature", "vibration", "current", "pressure")
IOT_WINDOW = 24  # steps per window
_IOT_TRAIN_WINDOWS = 18  # of the 24 windows per device; the later 6 are the test period
# How each sensor responds to degradation h ∈ [0, 1] (in units of its noise-free spread).
_DEGRADE_SHIFT = np.array([1.5, 3.0, 1.2, -1.2])


def generate_iot(
    n_devices: int = 120,
    windows_per_device: int = 24,
    window: int = IOT_WINDOW,
    horizon: int = 36,
    failure_rate: float = 1.6,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate SYNTHETIC sensor windows: ``(x, y, device, position)``.

    ``x`` is ``(N, 4, window)`` raw readings of :data:`IOT_SENSORS`; ``y[i] = 1`` when the device
    fails within ``horizon`` steps after window ``i`` ends; ``position`` is the window's index in
    its device's timeline (for a temporal split). Generative story, per device:

    - its own baseline per sensor (N(0, 1) offsets), noise level, daily temperature cycle and a
      slow ageing drift over its lifetime — the per-device feature shift;
    - about ``failure_rate`` failures at uniform times (Poisson count, thinned so wear cycles do
      not overlap), each preceded by a degradation ramp of 60–120 steps: the health deficit
      ``h`` grows linearly to 1 at the failure, raising temperature, vibration (and its noise)
      and current and lowering pressure; a repair resets ``h``;
    - benign load changes: windows whose temperature and current step up without degradation,
      so a level shift alone is not a failure signal.

    >>> x, y, dev, pos = generate_iot(n_devices=5, windows_per_device=10, seed=1)
    >>> x.shape, sorted(set(dev.tolist())), int(pos.max())
    ((50, 4, 24), [0, 1, 2, 3, 4], 9)
    """
    rng = np.random.default_rng([seed, 0x107])
    steps = windows_per_device * window
    t = np.arange(steps)
    xs, ys, devs, poss = [], [], [], []
    for d in range(n_devices):
        health = np.zeros(steps)
        # Failure times: uniform over the timeline (so train and test periods see the same
        # rate), thinned so each wear cycle has room for its ramp plus repair downtime.
        cand = np.sort(rng.integers(60, steps + horizon, size=rng.poisson(failure_rate)))
        fails: list[int] = []
        for f in cand.tolist():
            ramp = int(rng.integers(60, 121))
            if fails and f - ramp < fails[-1] + 10:
                continue
            seg = slice(max(f - ramp, 0), min(f, steps))
            health[seg] = (t[seg] - (f - ramp)) / ramp
            fails.append(f)

        base = rng.normal(0.0, 0.7, size=(4, 1))
        noise = rng.uniform(0.15, 0.35, size=(4, 1))
        drift = rng.normal(0.0, 0.6, size=(4, 1)) * (t / steps)
        cycle = np.zeros((4, steps))
        cycle[0] = rng.uniform(0.2, 0.5) * np.sin(2 * np.pi * t / 48 + rng.uniform(0, 2 * np.pi))
        load = np.zeros(steps)
        for _ in range(int(rng.poisson(3))):  # benign load steps, lasting 10–40 steps
            s0 = int(rng.integers(0, steps))
            load[s0 : s0 + int(rng.integers(10, 41))] = rng.uniform(0.5, 1.2)
        sig = base + drift + cycle + _DEGRADE_SHIFT[:, None] * health
        sig[0] += 0.6 * load
        sig[2] += 0.9 * load
        noise_t = noise * np.ones((4, steps))
        noise_t[1] *= 1.0 + 2.0 * health  # a worn bearing also rattles: vibration gets noisier
        sig = sig + rng.normal(size=(4, steps)) * noise_t

        ends = (np.arange(windows_per_device) + 1) * window  # exclusive end of each window
        fa = np.asarray(fails, dtype=np.int64)
        label = ((fa[None, :] >= ends[:, None]) & (fa[None, :] < ends[:, None] + horizon)).any(1)
        xs.append(sig.reshape(4, windows_per_device, window).transpose(1, 0, 2))
        ys.append(label.astype(np.int64))
        devs.append(np.full(windows_per_device, d, dtype=np.int64))
        poss.append(np.arange(windows_per_device, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(devs), np.concatenate(poss)


def load_iot(seed: int = 0, data_root: str | None = None) -> ScenarioData:
    """SYNTHETIC predictive maintenance: 120 devices, windows of 4 sensors × 24 steps (flattened).

    Label 1 = the device fails within 36 steps after the window. Split in time per device: the
    first 18 of its 24 windows train, the last 6 test (random splits would let a model
    memorise a device's neighbouring windows). ``groups`` = device id. Each sensor is z-scored
    with training statistics pooled over all steps; the flattened layout is sensor-major
    (``x.view(-1, 4, 24)`` recovers it).

    >>> d = load_iot(seed=0)
    >>> d.input_shape, int(d.groups.max()) + 1
    ((96,), 120)
    """
    x, y, dev, pos = generate_iot(seed=seed)
    train = pos < _IOT_TRAIN_WINDOWS
    mu = x[train].mean(axis=(0, 2), keepdims=True)
    sd = x[train].std(axis=(0, 2), keepdims=True)
    x = ((x - mu) / sd).reshape(len(x), -1)
    return to_data(
        x[train],
        y[train],
        x[~train],
        y[~train],
        n_classes=2,
        groups=dev[train],
        description=(
            "SYNTHETIC IoT sensor windows (not real data): 120 devices, 4 sensors x 24 steps "
            "(sensor-major, flattened); label 1 = failure within 36 steps"
        ),
    )
