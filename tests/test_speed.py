"""Speed levers: the compile decision, the optimizer kernel, the allocator settings."""

from __future__ import annotations

import torch

from doctune.train.speed import CompileEstimate, adamw_kwargs, should_compile

EST = CompileEstimate(compile_s=100.0, speedup=1.25)  # saves 20% of each step


def _decide(setting: str, device: str, precision: str, steps: int, step_s: float | None,
            estimate: CompileEstimate | None = None) -> bool:
    return should_compile(setting, device_type=device, precision=precision, remaining_steps=steps,
                          step_s=step_s, estimate=estimate)[0]


def test_compile_auto_only_when_it_pays_for_itself_twice() -> None:
    # 10 steps of 50 s save 100 s: not twice the 100 s of compiling
    assert not _decide("auto", "cpu", "bf16", 10, 50.0, EST)
    # 25 steps save 250 s: compile
    on, reason = should_compile("auto", device_type="cpu", precision="bf16", remaining_steps=25,
                                step_s=50.0, estimate=EST)
    assert on and "250s saved" in reason


def test_compile_settings_on_off_and_unknown_devices() -> None:
    assert _decide("on", "cpu", "fp32", 1, None)
    assert not _decide("off", "cuda", "bf16", 10**6, 10.0)
    assert not _decide("auto", "mps", "fp16", 10**6, 10.0)
    assert not _decide("auto", "cuda", "bf16", 10**6, None)  # no measured step yet
    assert _decide("auto", "cuda", "bf16", 10**6, 1.0)
    # a CPU in fp32 gains nothing from compiling: never under auto
    assert not _decide("auto", "cpu", "fp32", 10**6, 100.0)


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
