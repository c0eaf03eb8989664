"""Speed levers: the compile decision, the optimizer kernel, the allocator settings."""

from __future__ import annotations

import torch

from doctune.train.speed import CompileEstimate, adamw_kwargs, should_compile

EST = CompileEstimate(compile_s=100.0, speedup=1.25)  # saves 20% of each step


def test_compile_auto_only_when_it_pays_for_itself_twice() -> None:
    # 10 steps of 50 s save 100 s: not twice the 100 s of compiling
    assert should_compile("auto", device_type="cpu", remaining_steps=10, step_s=50.0,
                          estimate=EST)[0] is False
    # 25 steps save 250 s: compile
    on, reason = should_compile("auto", device_type="cpu", remaining_steps=25, step_s=50.0,
                                estimate=EST)
    assert on and "250s saved" in reason


def test_compile_settings_on_off_and_unknown_devices() -> None:
    assert should_compile("on", device_type="cpu", remaining_steps=1, step_s=None)[0]
    assert not should_compile("off", device_type="cuda", remaining_steps=10**6, step_s=10.0)[0]
    assert not should_compile("auto", device_type="mps", remaining_steps=10**6, step_s=10.0)[0]
    assert not should_compile("auto", device_type="cuda", remaining_steps=10**6, step_s=None)[0]


def test_fused_adamw_on_cpu_matches_foreach() -> None:
    kwargs = adamw_kwargs(torch.device("cpu"))
    assert kwargs == {"fused": True}
    torch.manual_seed(0)
    weights = [torch.randn(7, 5), torch.randn(5)]
    grads = [torch.randn_like(w) for w in weights]
    results = []
    for kw in (kwargs, {"foreach": True}):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, **kw)
        for _ in range(3):
            opt.step()
        results.append([p.detach() for p in params])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
