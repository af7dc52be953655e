"""nn.GRU with a hand-written backward through time, for training on the CPU.

The built-in CPU GRU records about fifteen autograd nodes per time step, so a 64-step chunk's
backward is a thousand tiny ops. Here the forward is nn.GRU's own (no graph), and the backward
rebuilds every gate for all steps at once from the saved outputs, leaving four ops per step for
the one truly sequential part, the recurrence of dL/dh. Twice as fast for a 64-step chunk of
8 users at H = 64; the gradients equal nn.GRU's to float rounding (a unit test holds them).

Same parameters and state_dict keys as nn.GRU, so checkpoints load either way. The fast path
covers what the model uses (one layer, one direction, batch_first, biases, a dense input on the
CPU); anything else, and inference, runs nn.GRU unchanged."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _GRUThroughTime(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gru: nn.GRU, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,  # type: ignore[override]
                b_ih: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor]:
        out, h_last = nn.GRU.forward(gru, x, h0.unsqueeze(0))  # autograd is off in here
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, out)
        return out, h_last.squeeze(0)

    @staticmethod
    def backward(ctx, d_out: Tensor | None, d_h: Tensor | None):  # type: ignore[override]
        x, h0, w_ih, w_hh, b_ih, b_hh, out = ctx.saved_tensors
        B, T, H = out.shape
        # time-major from here, so that each step's slice is contiguous
        h_prev = torch.cat([h0.unsqueeze(0), out.transpose(0, 1)[:-1]], 0)  # [T, B, H]
        x_t = x.transpose(0, 1)
        gi = F.linear(x_t, w_ih, b_ih)  # gates r, z, n: input and hidden sides, every step at once
        gh = F.linear(h_prev, w_hh, b_hh)
        rz = torch.sigmoid(gi[..., : 2 * H] + gh[..., : 2 * H])
        r, z = rz[..., :H], rz[..., H:]
        n = torch.tanh(gi[..., 2 * H:] + r * gh[..., 2 * H:])
        # h_t = (1 - z) n + z h_{t-1}: what dL/dh_t becomes at each pre-activation
        to_n = (1 - z) * (1 - n * n)
        to_z = (h_prev - n) * z * (1 - z)
        to_r = to_n * gh[..., 2 * H:] * r * (1 - r)
        to_hidden_side = torch.stack([to_r, to_z, to_n * r], 2)  # [T, B, 3, H]
        d_out_t = d_out.transpose(0, 1) if d_out is not None else out.new_zeros(T, B, H)
        dh_at = out.new_empty(T, B, H)
        d_gh = out.new_empty(T, B, 3, H)
        dh = d_h if d_h is not None else h0.new_zeros(B, H)
        for t in range(T - 1, -1, -1):
            cur = torch.add(dh, d_out_t[t], out=dh_at[t])
            torch.mul(cur.unsqueeze(1), to_hidden_side[t], out=d_gh[t])
            dh = torch.addmm(cur * z[t], d_gh[t].view(B, 3 * H), w_hh)
        d_gh_flat = d_gh.view(T * B, 3 * H)
        d_gi = torch.cat([d_gh_flat[:, : 2 * H], (dh_at * to_n).view(T * B, H)], 1)
        d_x = (d_gi @ w_ih).view(T, B, -1).transpose(0, 1) if ctx.needs_input_grad[1] else None
        return (None, d_x, dh, d_gi.t() @ x_t.reshape(T * B, -1), d_gh_flat.t() @ h_prev.reshape(T * B, H),
                d_gi.sum(0), d_gh_flat.sum(0))


class BPTTGRU(nn.GRU):
    """Drop-in nn.GRU (same arguments, outputs and parameters); see the module docstring."""

    def forward(self, input: Tensor, hx: Tensor | None = None):  # type: ignore[override]
        fast = (torch.is_grad_enabled() and isinstance(input, Tensor) and input.device.type == "cpu"
                and input.dim() == 3 and self.num_layers == 1 and not self.bidirectional
                and self.batch_first and self.bias and self.proj_size == 0 and input.shape[1] > 0)
        if not fast:
            return super().forward(input, hx)
        if hx is None:
            hx = input.new_zeros(1, input.shape[0], self.hidden_size)
        out, h_last = _GRUThroughTime.apply(self, input, hx.squeeze(0), self.weight_ih_l0, self.weight_hh_l0,
                                            self.bias_ih_l0, self.bias_hh_l0)
        return out, h_last.unsqueeze(0)
