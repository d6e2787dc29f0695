"""The written-out optimisers match torch.optim's."""

from __future__ import annotations

import torch

from napari_scribble_refine.core.optimiser import Adam


def test_adam_matches_torch_optim_adam():
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(5, 3))
    ref = torch.nn.Parameter(ours.detach().clone())
    opt_ours, opt_ref = Adam([ours], lr=0.05), torch.optim.Adam([ref], lr=0.05)
    for _ in range(20):
        for p, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad()
            ((p**3).sum() + p.sum()).backward()
            opt.step()
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours.detach(), torch.zeros(5, 3))
