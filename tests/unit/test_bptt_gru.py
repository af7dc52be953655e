"""models/bptt_gru.py: the hand-written backward equals nn.GRU's autograd."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.bptt_gru import BPTTGRU

pytestmark = pytest.mark.unit


def twin_grus(dtype=torch.float64) -> tuple[nn.GRU, BPTTGRU]:
    torch.manual_seed(0)
    ref = nn.GRU(10, 6, batch_first=True).to(dtype)
    fast = BPTTGRU(10, 6, batch_first=True).to(dtype)
    fast.load_state_dict(ref.state_dict())  # same keys: checkpoints load either way
    return ref, fast


@pytest.mark.parametrize("with_h0", [False, True])
def test_outputs_and_every_gradient_equal_nn_gru(with_h0):
    ref, fast = twin_grus()
    x = torch.randn(3, 7, 10, dtype=torch.float64)
    h0 = torch.randn(1, 3, 6, dtype=torch.float64) if with_h0 else None
    w_out, w_h = torch.randn(3, 7, 6, dtype=torch.float64), torch.randn(1, 3, 6, dtype=torch.float64)
    grads = []
    for gru in (ref, fast):
        xi = x.clone().requires_grad_()
        hi = h0.clone().requires_grad_() if with_h0 else None
        out, h = gru(xi, hi)
        loss = (out * w_out).sum() + (h * w_h).sum()  # both outputs feed the loss
        inputs = [xi] + ([hi] if with_h0 else []) + list(gru.parameters())
        grads.append((out.detach(), h.detach(), torch.autograd.grad(loss, inputs)))
    (o1, h1, g1), (o2, h2, g2) = grads
    assert torch.equal(o1, o2) and torch.equal(h1, h2)  # the forward is nn.GRU's own
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck():
    _, fast = twin_grus()
    x = torch.randn(2, 4, 10, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fast(a, b), (x, h0))


def test_inference_single_steps_and_unbatched_input_match_nn_gru():
    ref, fast = twin_grus(torch.float32)
    x = torch.randn(2, 5, 10)
    with torch.no_grad():  # inference: nn.GRU's own path
        assert torch.equal(fast(x)[0], ref(x)[0])
    step = torch.randn(2, 1, 10)  # one step with autograd on: the fast path
    assert torch.equal(fast(step)[0].detach(), ref(step)[0].detach())
    unbatched = torch.randn(5, 10)  # [T, I]: nn.GRU's path
    assert torch.equal(fast(unbatched)[0].detach(), ref(unbatched)[0].detach())
