"""Tests for fedpress.sim.network: links, presets, transfer arithmetic, stragglers, clock."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedpress.sim.network import (
    PRESETS,
    Link,
    Participant,
    compute_seconds,
    make_links,
    round_clock,
    sample_available,
    transfer_seconds,
)


def test_transfer_seconds_hand_computed():
    # 250 kB over 2 Mbit/s: 2e6 bits / 2e6 bit/s = 1 s, plus 30 ms latency.
    assert transfer_seconds(250_000, 2.0, 0.03) == pytest.approx(1.03)
    assert transfer_seconds(0, 2.0, 0.03) == pytest.approx(0.03)
    # Doubling bytes doubles only the serialisation part.
    a, b = transfer_seconds(10_000, 1.0, 0.5), transfer_seconds(20_000, 1.0, 0.5)
    assert b - 0.5 == pytest.approx(2 * (a - 0.5))
    with pytest.raises(ValueError, match="nbytes"):
        transfer_seconds(-1, 1.0, 0.0)
    with pytest.raises(ValueError, match="mbps"):
        transfer_seconds(1, 0.0, 0.0)


def test_compute_seconds_scales_with_work_and_speed():
    ref = Link(1.0, 1.0, 0.0)
    slow = Link(1.0, 1.0, 0.0, compute_factor=0.25)
    assert compute_seconds(500, 3, ref, seconds_per_sample=1e-3) == pytest.approx(1.5)
    assert compute_seconds(500, 3, slow, seconds_per_sample=1e-3) == pytest.approx(6.0)


def test_participant_finish_is_down_compute_up():
    link = Link(up_mbps=1.0, down_mbps=4.0, latency_s=0.1)
    p = Participant(3, link, down_bytes=1_000_000, up_bytes=125_000, compute_s=2.5)
    # down: 0.1 + 8e6/4e6 = 2.1; up: 0.1 + 1e6/1e6 = 1.1
    assert p.finish_s() == pytest.approx(2.1 + 2.5 + 1.1)


def _participants():
    fast = Participant(0, Link(10.0, 10.0, 0.0), 1_250_000, 1_250_000, 1.0)  # 1 + 1 + 1 = 3 s
    mid = Participant(1, Link(5.0, 5.0, 0.0), 1_250_000, 1_250_000, 1.0)  # 2 + 1 + 2 = 5 s
    slow = Participant(2, Link(0.5, 0.5, 0.0), 1_250_000, 1_250_000, 1.0)  # 20 + 1 + 20 = 41 s
    return [fast, mid, slow]


def test_deadline_drops_straggler_round_waits_out_the_deadline_unless_idealised():
    ps = _participants()
    t = round_clock(ps, deadline_s=10.0, wait_full_deadline=False)
    assert t.kept == [0, 1] and t.dropped == [2]
    assert t.seconds == pytest.approx(max(ps[0].finish_s(), ps[1].finish_s()))
    assert t.seconds == pytest.approx(5.0)
    assert t.finish_s[2] == pytest.approx(41.0)
    waited = round_clock(ps, deadline_s=10.0)  # the default: nobody can know 2 will miss
    assert waited.seconds == 10.0 and waited.kept == [0, 1]
    # everyone in time: the round ends when the last update arrives, not at the deadline
    assert round_clock(ps[:2], deadline_s=10.0).seconds == pytest.approx(5.0)


def test_no_deadline_keeps_everyone_and_nobody_kept_lasts_deadline():
    ps = _participants()
    t = round_clock(ps)
    assert t.kept == [0, 1, 2] and t.dropped == []
    assert t.seconds == pytest.approx(41.0)
    none = round_clock(ps, deadline_s=2.0)
    assert none.kept == [] and none.dropped == [0, 1, 2]
    assert none.seconds == 2.0
    assert round_clock([]).seconds == 0.0
    with pytest.raises(ValueError, match="distinct"):
        round_clock([ps[0], ps[0]])
    with pytest.raises(ValueError, match="deadline_s"):
        round_clock(ps, deadline_s=-1.0)


def test_nbiot_slower_than_wifi_for_same_bytes():
    nbytes = 100_000
    times = {}
    for name in ("wifi", "4g", "3g", "nbiot"):
        m = PRESETS[name].median
        times[name] = transfer_seconds(nbytes, m.up_mbps, m.latency_s)
    assert times["wifi"] < times["4g"] < times["3g"] < times["nbiot"]
    # NB-IoT at tens of kbit/s: 100 kB takes tens of seconds.
    assert times["nbiot"] > 10 * times["3g"]


def test_make_links_deterministic_and_spread():
    a = make_links("4g", 50, seed=1)
    assert a == make_links("4g", 50, seed=1)
    assert a != make_links("4g", 50, seed=2)
    med = PRESETS["4g"].median
    ups = np.array([ln.up_mbps for ln in a])
    # log-normal around the median: the sample median is near the preset's, with real spread.
    assert 0.7 * med.up_mbps < np.median(ups) < 1.4 * med.up_mbps
    assert ups.max() / ups.min() > 2
    assert all(0.0 <= ln.availability <= 1.0 for ln in a)
    flat = make_links("4g", 5, spread=0.0)
    assert all(ln == med for ln in flat)
    wide = np.array([ln.up_mbps for ln in make_links("4g", 50, seed=1, spread=1.5)])
    assert np.std(np.log(wide)) > np.std(np.log(ups))


def test_mixed_preset_proportions():
    links = make_links("mixed", 100, seed=0, spread=0.0)
    by_kind = {
        name: sum(ln == PRESETS[name].median for ln in links)
        for name in ("wifi", "4g", "3g", "nbiot")
    }
    assert by_kind == {name: round(100 * w) for name, w in PRESETS["mixed"].mix}
    # Kinds are shuffled by seed, not laid out in blocks.
    other = make_links("mixed", 100, seed=1, spread=0.0)
    assert links != other


def test_ideal_is_compute_only():
    for name in ("ideal", "none"):
        links = make_links(name, 4, seed=3)
        assert all(math.isinf(ln.up_mbps) and ln.latency_s == 0.0 for ln in links)
        p = Participant(0, links[0], 10**9, 10**9, compute_s=1.25)
        assert round_clock([p]).seconds == 1.25


def test_preset_lookup_errors():
    with pytest.raises(ValueError, match="unknown network preset '5g'.*wifi.*nbiot.*mixed"):
        make_links("5g", 3)
    with pytest.raises(ValueError, match="spread"):
        make_links("wifi", 3, spread=-0.1)
    with pytest.raises(ValueError, match="n_clients"):
        make_links("wifi", -1)


def test_link_validation():
    with pytest.raises(ValueError, match="up_mbps"):
        Link(0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="latency_s"):
        Link(1.0, 1.0, -0.1)
    with pytest.raises(ValueError, match="availability"):
        Link(1.0, 1.0, 0.0, availability=1.5)


def test_sample_available_matches_availability():
    links = [Link(1, 1, 0, availability=a) for a in (0.0, 1.0, 0.3)] * 2000
    cand = np.arange(len(links))
    online = sample_available(links, cand, np.random.default_rng(0))
    avail = np.array([ln.availability for ln in links])
    assert not np.any(avail[online] == 0.0)
    assert set(np.flatnonzero(avail == 1.0)) <= set(online.tolist())
    frac = np.isin(np.flatnonzero(avail == 0.3), online).mean()
    assert 0.25 < frac < 0.35
    again = sample_available(links, cand, np.random.default_rng(0))
    assert np.array_equal(online, again)
    assert np.all(np.diff(online) > 0)  # candidate order preserved


def test_links_carry_their_preset_kind():
    links = make_links("mixed", 20, seed=0)
    assert {ln.kind for ln in links} == {"wifi", "4g", "3g", "nbiot"}
    assert sum(ln.kind == "nbiot" for ln in links) == 2
    assert all(ln.kind == "4g" for ln in make_links("4g", 3, seed=1))
    assert Link(1.0, 1.0, 0.0).kind == ""
