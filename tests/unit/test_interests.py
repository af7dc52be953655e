"""Interest profiles (models/interests.py): event-time decay, the model blend, the cap, publishing."""
import pytest

from models.interests import DAY_MS, InterestProfile, changed_materially

pytestmark = pytest.mark.unit

T0 = 1_511_000_000_000
HL = 3 * DAY_MS


def test_a_count_halves_after_one_half_life_of_event_time():
    p = InterestProfile()
    p.observe(7, T0, half_life_ms=HL)
    assert p.count(7, T0, HL) == pytest.approx(1.0)
    assert p.count(7, T0 + HL, HL) == pytest.approx(0.5)
    # an event one half-life later weighs twice the first one: shares 1/3 and 2/3
    p.observe(8, T0 + HL, half_life_ms=HL)
    assert p.mass[7] == pytest.approx(0.5) and p.mass[8] == pytest.approx(1.0)
    assert p.top() == [[8, pytest.approx(2 / 3, abs=1e-6)], [7, pytest.approx(1 / 3, abs=1e-6)]]


def test_a_late_event_counts_as_if_it_had_come_in_order():
    in_order, late = InterestProfile(), InterestProfile()
    for cat, ts in [(1, T0), (2, T0 + DAY_MS), (3, T0 + 4 * DAY_MS)]:
        in_order.observe(cat, ts, HL)
    for cat, ts in [(1, T0), (3, T0 + 4 * DAY_MS), (2, T0 + DAY_MS)]:
        late.observe(cat, ts, HL)
    assert late.ref_ts == in_order.ref_ts == T0 + 4 * DAY_MS
    assert late.mass == pytest.approx(in_order.mass)


def test_weights_are_shares_in_unit_interval_heaviest_first_at_most_k():
    p = InterestProfile()
    for i in range(9):
        for _ in range(i + 1):
            p.observe(100 + i, T0 + i, HL)
    top = p.top(5)
    assert [c for c, _ in top] == [108, 107, 106, 105, 104]
    weights = [w for _, w in top]
    assert weights == sorted(weights, reverse=True) and all(0 <= w <= 1 for w in weights)
    assert sum(p.shares().values()) == pytest.approx(1.0)


def test_blend_mixes_own_shares_with_the_model_probabilities():
    p = InterestProfile()
    for _ in range(3):
        p.observe(1, T0, HL)
    p.observe(2, T0, HL)  # own shares: 1 -> .75, 2 -> .25
    model = {2: 0.5, 9: 0.5}
    blended = dict((c, w) for c, w in p.top(5, model, blend=0.5))
    assert blended == pytest.approx({1: 0.375, 2: 0.375, 9: 0.25})
    assert dict((c, w) for c, w in p.top(5, model, blend=0.0)) == pytest.approx({1: 0.75, 2: 0.25})
    assert p.top(1, model, blend=1.0)[0][1] == pytest.approx(0.5)  # the model alone
    assert sum(w for _, w in p.top(5, model, blend=0.5)) <= 1.0 + 1e-9


def test_the_cap_drops_the_smallest_count():
    p = InterestProfile()
    p.observe(1, T0, HL)  # the oldest: smallest once the others come later
    for i in range(2, 6):
        p.observe(i, T0 + i * DAY_MS, HL)
    p.observe(1, T0, HL, cap=5)  # still 5 categories: nothing dropped
    assert len(p.mass) == 5
    p.observe(6, T0 + 6 * DAY_MS, HL, cap=5)
    assert len(p.mass) == 5 and 2 not in p.mass and 1 in p.mass  # 1 has two events, 2 one older


def test_no_category_means_no_interests_even_with_a_model():
    p = InterestProfile()
    p.observe(-1, T0, HL)
    p.observe(None, T0 + 1, HL)
    assert not p and p.ref_ts is None
    assert p.top(5, {3: 0.9}, blend=0.5) == []


def test_wire_round_trip_keeps_string_and_int_ids():
    p = InterestProfile()
    p.observe("SKU-shoes", T0, HL)
    p.observe(42, T0 + DAY_MS, HL)
    back = InterestProfile.from_wire(p.to_wire())
    assert back.ref_ts == p.ref_ts and back.mass == pytest.approx(p.mass)
    assert InterestProfile.from_wire(None) == InterestProfile()


def test_publish_when_a_weight_moves_past_the_threshold_entering_and_leaving_included():
    last = [[1, 0.5], [2, 0.3], [3, 0.02]]
    assert changed_materially(None, [[1, 1.0]])  # the first interests are news
    assert not changed_materially(None, [])
    assert not changed_materially(last, [[1, 0.55], [2, 0.25], [3, 0.02]], threshold=0.1)
    assert changed_materially(last, [[1, 0.65], [2, 0.25], [3, 0.02]], threshold=0.1)
    assert changed_materially(last, [[1, 0.5], [4, 0.3], [3, 0.02]], threshold=0.1)  # 2 left, 4 came
    # a light category swapping places at the tail is not material; order alone is not either
    assert not changed_materially(last, [[1, 0.5], [2, 0.3], [5, 0.03]], threshold=0.1)
    assert not changed_materially(last, [[2, 0.3], [1, 0.5], [3, 0.02]], threshold=0.1)
    assert changed_materially(last, [[1, 0.5], [2, 0.3], [5, 0.03]], threshold=0.01)


def test_the_profiles_topic_is_compacted_keyed_like_predictions_and_configurable():
    from stream.config import ConfigError, Settings
    from stream.topics import topic_specs

    settings = Settings(prefix="shop.")
    specs = {s.name: s for s in topic_specs(settings, 6)}
    profiles = specs["shop.profiles"]
    assert settings.profiles_topic == "shop.profiles"
    assert profiles.config == {"cleanup.policy": "compact"}
    assert profiles.partitions == specs[settings.predictions_topic].partitions == 6
    env = Settings.from_env({"SEQSTREAM_INTERESTS_BLEND": "0", "SEQSTREAM_PROFILES_THRESHOLD": "0.25",
                             "SEQSTREAM_INTERESTS_HALF_LIFE_MS": "3600000"})
    assert (env.interests_blend, env.profiles_threshold, env.interests_half_life_ms) == (0.0, 0.25, 3_600_000)
    with pytest.raises(ConfigError, match="interests blend"):
        Settings(interests_blend=1.5).validate()
