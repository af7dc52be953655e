"""The demo's live view keeps the latest prediction after each action on screen, and the mean
P(purchase) after each, so a reacting next-action head is visible even when carts are rare."""
from __future__ import annotations

import pytest

from stream.demo import LiveView

pytestmark = pytest.mark.unit


def _msg(user: int, action: str, p_buy: float) -> dict:
    return {"user_id": user, "event": {"action": action, "item_id": 5, "ts": 0}, "model_version": 1,
            "next_action": {"click": 1 - p_buy - 0.05, "cart": 0.05, "purchase": p_buy},
            "next_items": [[5, -1.0]], "churn_risk": 0.1}


def test_latest_cart_stays_on_screen_with_the_mean_after_each_action():
    view = LiveView()
    view.add_prediction(_msg(1, "cart", 0.12), 10)
    view.add_prediction(_msg(9, "click", 0.04), 10)
    for n in range(10):  # pushes the cart out of the last six
        view.add_prediction(_msg(2, "click", 0.02), 10)
    text = view.render()
    recent, latest = text.split("latest after each action:")
    assert "user      1 cart" not in recent  # not among the recent lines any more
    assert "user      1 cart" in latest and "purchase 0.12" in latest
    assert "mean P(purchase) after a click 0.022 (last 11), cart 0.120 (last 1)" in latest
