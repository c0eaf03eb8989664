"""Speed levers: the compile decision, the optimizer kernel, the allocator settings."""

from __future__ import annotations

import torch

from doctune.train.speed import (
    CompileEstimate,
    CompileTracker,
    adamw_kwargs,
    compile_blocks,
    should_compile,
)

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


def _tiny_gpt2(n_layer: int = 3) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=16, n_head=2, n_positions=32,
                                      vocab_size=50))


def test_compile_blocks_compiles_each_block_of_a_peft_model() -> None:
    from doctune.modeling import apply_lora

    model = apply_lora(_tiny_gpt2(3), r=2, alpha=4, dropout=0.0)
    names = list(model.state_dict())
    assert compile_blocks(model) == 3  # GPT2Block x 3, found through the PEFT wrapper
    assert list(model.state_dict()) == names  # checkpoints keep their keys


def test_tracker_auto_waits_for_two_eager_steps_then_measures_the_payoff() -> None:
    model = _tiny_gpt2(2)
    tracker = CompileTracker("auto", "cuda", "bf16")  # cuda/bf16: ~1.3x for ~40 s
    assert tracker.start(model) is None
    assert tracker.after_step(model, 30.0, remaining=999) is None  # first step: warm-up
    said = tracker.after_step(model, 10.0, remaining=998)
    assert said is not None and said.startswith("compiling:") and tracker.compiled
    tracker.after_step(model, 52.0, remaining=997)  # the step that compiled
    for _ in range(3):
        tracker.after_step(model, 8.0, remaining=0)
    assert tracker.compile_s == 42.0
    facts = tracker.facts()
    assert facts["compiled_step_s"] == 8.0 and facts["eager_step_s"] == 10.0
    # 4 compiled steps x 2 s saved = 8 s < 42 s of compiling
    assert tracker.summary() == ("torch.compile: 42s compiling; steps 8.00s compiled vs 10.00s "
                                 "eager, 8s saved: it did not pay for itself")


def test_tracker_auto_stays_eager_on_a_cpu_in_fp32_and_off_means_off() -> None:
    model = _tiny_gpt2(1)
    for setting, device, precision in (("auto", "cpu", "fp32"), ("off", "cuda", "bf16")):
        tracker = CompileTracker(setting, device, precision)
        assert tracker.start(model) is None
        said = [tracker.after_step(model, 100.0, remaining=10**6) for _ in range(4)]
        # auto says once why it stays eager; off says nothing
        assert said == [None, "no compile: no measured gain on cpu in fp32", None, None] \
            if setting == "auto" else said == [None] * 4
        assert not tracker.compiled and tracker.summary() is None
        assert tracker.facts() == {"compile": setting, "compiled": False,
                                   "compile_reason": (tracker.reason or None)}


def test_tracker_weighs_each_timed_step_by_its_tokens() -> None:
    # cpu/bf16: ~1.25x for ~65 s. 200 steps left: at 4 s a step compiling saves 160 s (> 2 x
    # 65 s); two short steps of a quarter of the mean tokens, 1 s each, must not say "no".
    model = _tiny_gpt2(2)
    short = CompileTracker("auto", "cpu", "bf16")
    short.after_step(model, 1.0, remaining=201, tokens=256, mean_tokens=1024)
    said = short.after_step(model, 1.0, remaining=200, tokens=256, mean_tokens=1024)
    assert said is not None and said.startswith("compiling: ~160s saved") and short.compiled
    unweighed = CompileTracker("auto", "cpu", "bf16")
    unweighed.after_step(model, 1.0, remaining=201)
    assert unweighed.after_step(model, 1.0, remaining=200).startswith("no compile")
    # the README quickstart: 204 steps of ~2 s left save ~82 s, less than twice 65 s
    quickstart = CompileTracker("auto", "cpu", "bf16")
    quickstart.after_step(model, 2.0, remaining=205)
    assert quickstart.after_step(model, 2.0, remaining=204) == (
        "no compile: it would save ~82s over 204 steps and cost ~65s")
    # the step that compiled (a short one: 1 s of work) and the compiled steps, all
    # reported for a step of the mean size
    short.after_step(model, 41.0, remaining=199, tokens=256, mean_tokens=1024)
    for tokens in (256, 1024, 2048):
        short.after_step(model, 3.0 * tokens / 1024, remaining=0, tokens=tokens, mean_tokens=1024)
    assert short.compile_s == 40.0
    assert short.facts()["compiled_step_s"] == 3.0 and short.facts()["eager_step_s"] == 4.0
