"""The training loop end to end on a 2-layer GPT-2 with the real GPT-2 tokenizer, CPU fp32."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from doctune.config import Config, load_config
from doctune.errors import CheckpointError, ConfigError, TrainingError
from doctune.train.loop import train

TOPICS = ["routing", "components", "state", "testing", "deployment", "styling", "images", "forms"]


def write_docs(root: Path, n: int = 8) -> Path:
    """A small docs folder: MDX and Markdown pages with prose, lists and code."""
    root.mkdir(parents=True, exist_ok=True)
    for i, topic in enumerate(TOPICS[:n]):
        body = "\n\n".join(
            f"The {topic} guide explains how step {k} works. You configure {topic} in the project "
            f"file, then run the build. Each page of the {topic} section links to the reference."
            for k in range(1 + i % 3)
        )
        ext = ".mdx" if i % 2 else ".md"
        (root / f"{topic}{ext}").write_text(
            f"---\ntitle: About {topic}\n---\n\n{body}\n\n- first item\n- second item\n\n"
            f"```js\nexport const {topic} = () => load('{topic}');\n```\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_docs(tmp_path_factory.mktemp("docs"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer_dir: Path) -> Path:
    """A tiny GPT-2 without dropout, so equivalence tests compare like with like."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=50257,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=50256, eos_token_id=50256)
    out = tmp_path_factory.mktemp("tiny-nodrop")
    GPT2LMHeadModel(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(gpt2_tokenizer_dir).save_pretrained(out)
    return out


def make_cfg(docs: Path, model_dir: Path, out: Path, *overrides: str) -> Config:
    base = [f"data.path={docs}", f"model.name={model_dir}", f"train.output_dir={out}",
            "data.block_size=32", "data.overlap=8", "data.val_fraction=0.25",
            "train.micro_batch_size=2", "train.grad_accum=2", "train.max_steps=4",
            "train.lr=1e-3", "train.warmup_steps=1", "train.eval_every=2", "train.save_every=2",
            "train.precision=fp32", "train.device=cpu", "log.tensorboard=false",
            "log.progress=false", "log.report=false", "train.sample_max_new_tokens=4"]
    return load_config(None, [*base, *overrides])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    files = list((run / "final").glob("*.safetensors"))
    assert len(files) == 1, files
    return load_file(str(files[0]))


def test_full_finetune_run_leaves_everything_behind(docs: Path, model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = train(make_cfg(docs, model_dir, run, "log.report=true", "log.tensorboard=true"), quiet=True)
    assert res.steps == 4 and res.final_dir == run / "final"
    assert res.val_loss_after is not None and res.val_loss_before is not None
    assert res.val_loss_after < res.val_loss_before
    for name in ("config.yaml", "metrics.jsonl", "run.json", "data_summary.json", "samples.md",
                 "report.html", "tensorboard"):
        assert (run / name).exists(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-4"]
    rows = metrics(run)
    steps = [r for r in rows if "train_loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for key in ("train_loss", "lr", "tokens_per_sec", "mem_rss_mb"):
        assert all(key in r for r in steps), key
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert all(math.isclose(r["val_ppl"], math.exp(r["val_loss"]), rel_tol=1e-9) for r in evals)
    facts = json.loads((run / "run.json").read_text())
    assert facts["steps"] == 4 and facts["base_model"] == str(model_dir.resolve())

    # final/ is a transformers folder that reloads to the same logits
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(run / "final").eval()
    ids = torch.tensor([[15496, 995, 13, 383]])
    trained = res  # the in-memory model is gone; compare with weights from the last checkpoint
    ckpt = load_file(str(run / "checkpoints" / "step-4" / "weights.safetensors"))
    ref = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ref.load_state_dict({**ref.state_dict(), **ckpt})
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, ref(ids).logits, atol=1e-6)
    assert trained.tokens_seen > 0


def test_fixed_loss_sequence(docs: Path, model_dir: Path, tmp_path: Path) -> None:
    """The first losses of a seeded run, pinned (catches silent changes to data, loss or optimizer)."""
    train(make_cfg(docs, model_dir, tmp_path / "run", "train.eval_every=0"), quiet=True)
    losses = [r["train_loss"] for r in metrics(tmp_path / "run") if "train_loss" in r]
    assert losses == pytest.approx(EXPECTED_LOSSES, rel=2e-6)


def test_first_loss_equals_transformers_own_loss(docs: Path, model_dir: Path, tmp_path: Path) -> None:
    """Step 1's loss, recomputed from the same windows with transformers' built-in loss."""
    from transformers import AutoModelForCausalLM

    from doctune.data.store import TokenStore
    from doctune.train.batches import BatchOrder, collate, window_lengths

    run = tmp_path / "run"
    train(make_cfg(docs, model_dir, run, "train.max_steps=1", "train.eval_every=0"), quiet=True)
    windows = TokenStore.open(run / "data").split("train")
    order = BatchOrder(len(windows), 2, seed=42, lengths=window_lengths(windows), step_windows=4)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    total, count = 0.0, 0
    with torch.no_grad():
        for k in range(2):  # the two micro-batches of step 1
            ids, labels = collate([windows[i] for i in order.indices(k)], pad_id=50256)
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n  # HF: mean over its tokens
            count += n
    logged = next(r["train_loss"] for r in metrics(run) if "train_loss" in r)
    assert logged == pytest.approx(total / count, rel=1e-5)


EXPECTED_LOSSES = [10.815109, 10.757136, 10.689377, 10.646828]  # steps grouped by length


def test_accumulation_equals_bigger_micro_batch(docs: Path, model_dir: Path, tmp_path: Path) -> None:
    from doctune.data.store import TokenStore
    from doctune.train.batches import BatchOrder, collate, count_loss_tokens

    # the micro-batches of the first step carry different numbers of loss tokens, so a plain
    # mean per micro-batch would give another update than weighting by tokens
    train(make_cfg(docs, model_dir, tmp_path / "probe", "train.max_steps=1", "train.eval_every=0"), quiet=True)
    windows = TokenStore.open(tmp_path / "probe" / "data").split("train")
    order = BatchOrder(len(windows), 1, seed=42)
    counts = {count_loss_tokens(collate([windows[i] for i in order.indices(k)], 50256)[1]) for k in range(8)}
    assert len(counts) > 1
    common = ("train.max_steps=2", "train.eval_every=0", "train.save_every=0", "train.max_grad_norm=null")
    train(make_cfg(docs, model_dir, tmp_path / "a", "train.micro_batch_size=4", "train.grad_accum=1", *common), quiet=True)
    train(make_cfg(docs, model_dir, tmp_path / "b", "train.micro_batch_size=1", "train.grad_accum=4", *common), quiet=True)
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_grad_checkpointing_gives_the_same_losses(docs: Path, model_dir: Path, tmp_path: Path) -> None:
    common = ("train.max_steps=2", "train.eval_every=0", "train.save_every=0")
    train(make_cfg(docs, model_dir, tmp_path / "a", *common), quiet=True)
    train(make_cfg(docs, model_dir, tmp_path / "b", "train.grad_checkpointing=true", *common), quiet=True)
    la = [r["train_loss"] for r in metrics(tmp_path / "a") if "train_loss" in r]
    lb = [r["train_loss"] for r in metrics(tmp_path / "b") if "train_loss" in r]
    assert la == pytest.approx(lb, rel=1e-6)
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    for name in a:  # the gradients, not only the losses, are the same
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_compiled_blocks_give_the_same_training(docs: Path, model_dir: Path, tmp_path: Path) -> None:
    """train.compile=on: checkpointed blocks compiled, evaluation in between, same numbers.

    (Full fine-tuning: with LoRA, B starts at zero, so A's first gradient is exactly zero in
    one run and rounding noise in the other, which Adam then scales up to a full step.)
    """
    common = ("train.grad_checkpointing=true", "train.max_steps=3",
              "train.eval_every=1", "train.save_every=0")
    train(make_cfg(docs, model_dir, tmp_path / "eager", "train.compile=off", *common), quiet=True)
    train(make_cfg(docs, model_dir, tmp_path / "compiled", "train.compile=on", *common), quiet=True)
    rows = {run: metrics(tmp_path / run) for run in ("eager", "compiled")}
    for key in ("train_loss", "val_loss"):
        a, b = ([r[key] for r in rows[run] if key in r] for run in ("eager", "compiled"))
        assert len(a) == len(b) > 0 and a == pytest.approx(b, rel=1e-4)
    a, b = final_weights(tmp_path / "eager"), final_weights(tmp_path / "compiled")
    assert a.keys() == b.keys()  # compiling renames nothing in what is saved
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)  # 1% of one lr step
    facts = json.loads((tmp_path / "compiled" / "run.json").read_text())
    assert facts["compiled"] is True and facts["compile_s"] >= 0
    assert facts["compile_reason"] == "compile on, as configured"
    plain = json.loads((tmp_path / "eager" / "run.json").read_text())
    assert plain["compiled"] is False and "compile_s" not in plain


def test_compiled_lora_with_dropout_trains(docs: Path, model_dir: Path, tmp_path: Path) -> None:
    """train.compile=on with LoRA dropout (the default 0.05): inductor compiles the side path
    and its bit-packed dropout masks (a uint8 buffer viewed as bool did not compile on the
    CPU), and the adapter learns."""
    run = tmp_path / "run"
    train(make_cfg(docs, model_dir, run, "train.compile=on", "lora.enabled=true",
                   "lora.dropout=0.05", "train.max_steps=2", "train.eval_every=0",
                   "train.save_every=0"), quiet=True)
    facts = json.loads((run / "run.json").read_text())
    assert facts["compiled"] is True
    losses = [r["train_loss"] for r in metrics(run) if "train_loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    adapter = final_weights(run)
    assert any(adapter[k].abs().max() > 0 for k in adapter if "lora_B" in k)  # B starts at 0


def test_lora_trains_only_the_adapter(docs: Path, model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = train(make_cfg(docs, model_dir, run, "lora.enabled=true", "lora.r=8", "train.grad_checkpointing=true"), quiet=True)
    plain = tmp_path / "plain"
    train(make_cfg(docs, model_dir, plain, "lora.enabled=true", "lora.r=8"), quiet=True)
    adapter, ref = final_weights(run), final_weights(plain)
    lora_b = [k for k in adapter if "lora_B" in k]
    assert len(lora_b) == 2 * 4 and all(adapter[k].abs().max() > 0 for k in lora_b)  # B starts at 0
    for name in adapter:  # gradient checkpointing changes nothing but memory, with LoRA too
        torch.testing.assert_close(adapter[name], ref[name], rtol=1e-5, atol=1e-6)
    facts = json.loads((run / "run.json").read_text())
    # 2 layers of c_attn (32 -> 96), attn.c_proj (32 -> 32), c_fc (32 -> 128), mlp.c_proj (128 -> 32):
    # A (r x in) + B (out x r) each
    per_layer = (32 * 8 + 8 * 96) + (32 * 8 + 8 * 32) + (32 * 8 + 8 * 128) + (128 * 8 + 8 * 32)
    assert facts["params_trainable"] == 2 * per_layer == 8192
    assert (run / "final" / "adapter_config.json").is_file()
    adapter = json.loads((run / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(model_dir.resolve())
    assert adapter["fan_in_fan_out"] is True
    assert res.val_loss_after is not None and res.val_loss_before is not None
    assert (run / "final" / "tokenizer.json").is_file()


def test_refuses_to_overwrite_a_run_and_resume_needs_a_checkpoint(docs: Path, model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = make_cfg(docs, model_dir, run, "train.max_steps=1", "train.eval_every=0")
    train(cfg, quiet=True)
    with pytest.raises(ConfigError, match=r"already holds a run.*--resume"):
        train(cfg, quiet=True)
    stale = tmp_path / "stale"
    (stale / "checkpoints" / ".tmp-step-2").mkdir(parents=True)  # a crash during the first save
    (stale / "metrics.jsonl").write_text('{"step": 1}\n')
    stale_cfg = make_cfg(docs, model_dir, stale, "train.max_steps=1", "train.eval_every=0")
    with pytest.raises(ConfigError, match=r"holds the files of a run that saved no checkpoint "
                                          r"\(checkpoints, metrics.jsonl\)\. Start it anew with `--overwrite`"):
        train(stale_cfg, quiet=True)
    train(stale_cfg, quiet=True, overwrite=True)
    assert sorted(p.name for p in (stale / "checkpoints").iterdir()) == ["step-1"]
    with pytest.raises(CheckpointError, match=r"cannot resume exactly.*micro_batch_size: checkpoint 2, now 3"):
        train(make_cfg(docs, model_dir, run, "train.max_steps=3", "train.micro_batch_size=3"), resume=True, quiet=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="not a doctune run folder"):
        train(make_cfg(docs, model_dir, empty), resume=True, quiet=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(docs: Path, model_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import doctune.train.loss as loss  # the training loss is computed in loss.LossModule

    real = loss.causal_lm_loss
    calls = {"n": 0}

    def poisoned(model, input_ids, labels, attention_mask=None, **kw):  # type: ignore[no-untyped-def]
        loss_sum, n = real(model, input_ids, labels, **kw)
        calls["n"] += model.training
        if model.training and calls["n"] > 2 * 2:  # 2 steps of 2 micro-batches, then NaN
            loss_sum = loss_sum * float("nan")
        return loss_sum, n

    monkeypatch.setattr(loss, "causal_lm_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"loss became nan at step 3.*learning rate.*step-2"):
        train(make_cfg(docs, model_dir, run, "train.eval_every=0", "train.max_steps=6"), quiet=True)
    before = load_file(str(run / "checkpoints" / "step-2" / "weights.safetensors"))
    assert all(torch.isfinite(t).all() for t in before.values())
    assert not (run / "final").exists()


def test_auto_fit_shrinks_the_micro_batch_and_keeps_the_effective_batch(
        docs: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from doctune.plan import estimate_memory

    cfg = make_cfg(docs, model_dir, tmp_path / "run", "train.micro_batch_size=4", "train.grad_accum=1",
                   "train.max_steps=2", "train.eval_every=0", "train.save_every=0")
    peak = estimate_memory(cfg, device="cpu").peak_mb
    fitted = cfg.model_copy(update={"memory": cfg.memory.model_copy(
        update={"auto_fit": True, "budget": f"{peak - 0.5:.1f}MB"})})
    res = train(fitted, quiet=False)
    assert res.steps == 2
    saved = load_config(tmp_path / "run" / "config.yaml")  # what the run really used
    assert saved.train.micro_batch_size < 4
    assert saved.train.micro_batch_size * saved.train.grad_accum == 4
    assert estimate_memory(saved, device="cpu").peak_mb <= peak - 0.5
    out = capsys.readouterr()
    assert "memory.auto_fit" in out.out + out.err


def _budget_that_forces_lora(cfg: Config) -> float:
    """A memory budget that full fine-tuning cannot meet even at micro-batch 1 with
    checkpointing, and LoRA can."""
    from doctune.plan import estimate_memory

    smallest = cfg.model_copy(deep=True)
    smallest.train.micro_batch_size, smallest.train.grad_checkpointing = 1, True
    full = estimate_memory(smallest, device="cpu").peak_mb
    smallest.lora.enabled = True
    lora = estimate_memory(smallest, device="cpu").peak_mb
    assert lora < full - 2
    return (lora + full) / 2


def test_auto_fit_that_turns_lora_on_uses_the_lora_learning_rate(
        docs: Path, model_dir: Path, tmp_path: Path) -> None:
    from doctune.config import LR_ADAPTER_OR_SCRATCH

    cfg = make_cfg(docs, model_dir, tmp_path / "run", "train.max_steps=1", "train.eval_every=0",
                   "train.save_every=0", "train.lr=null")
    cfg.memory.auto_fit, cfg.memory.budget = True, f"{_budget_that_forces_lora(cfg):.1f}MB"
    train(cfg, quiet=True)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.lora.enabled and saved.train.grad_checkpointing
    assert saved.train.lr == LR_ADAPTER_OR_SCRATCH == 1e-3


def test_auto_fit_keeps_the_cpu_contention_warning(
        docs: Path, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import os

    import doctune.machine

    # 2 threads on 2 cores while another program keeps one of them busy
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(doctune.machine, "busy_cores", lambda sample_s=0.3: 1.0)
    cfg = make_cfg(docs, model_dir, tmp_path / "run", "train.max_steps=1", "train.eval_every=0",
                   "train.save_every=0")
    cfg.memory.auto_fit, cfg.memory.budget = True, f"{_budget_that_forces_lora(cfg):.1f}MB"
    train(cfg, quiet=False)
    out = capsys.readouterr()
    printed = out.out + out.err
    assert "memory.auto_fit" in printed
    assert "`--set train.num_threads=1`" in printed


def test_paths_that_would_write_into_the_docs_are_refused(docs: Path, model_dir: Path, tmp_path: Path) -> None:
    for out, how in ((docs, "is"), (docs / "runs" / "x", "lies inside"), (docs.parent, "holds")):
        with pytest.raises(ConfigError, match=rf"The run folder {out} {how} the docs folder {docs}: "
                                              "doctune never writes into your docs"):
            train(make_cfg(docs, model_dir, out), quiet=True)
    with pytest.raises(ConfigError, match=r"`data.cache_dir` .* lies inside the docs folder"):
        train(make_cfg(docs, model_dir, tmp_path / "run", f"data.cache_dir={docs / 'cache'}"), quiet=True)
    assert not (docs / "runs").exists() and not (docs / "cache").exists()


def test_a_folder_with_other_files_is_not_a_run_folder(docs: Path, model_dir: Path, tmp_path: Path) -> None:
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=r"holds files that are not a doctune run's \(notes.txt\)"):
            train(make_cfg(docs, model_dir, mine), quiet=True, overwrite=overwrite)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_overwrite_replaces_a_run_and_keeps_other_files(docs: Path, model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = make_cfg(docs, model_dir, run, "train.max_steps=1", "train.eval_every=0")
    train(cfg, quiet=True)
    (run / "checkpoints" / "step-7").mkdir()  # not complete: gone with the rest of the old run
    res = train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 2})}),
                quiet=True, overwrite=True)
    assert res.steps == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2"]
    assert json.loads((run / "run.json").read_text())["steps"] == 2


def test_a_scratch_run_cleans_each_doc_once_and_resumes_with_its_tokenizer(
        docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import doctune.data.clean

    calls: list[str] = []
    real = doctune.data.clean.clean_markdown

    def counting(text: str, **kw: object) -> object:
        calls.append(str(kw["path"]))
        return real(text, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(doctune.data.clean, "clean_markdown", counting)
    run = tmp_path / "run"
    cfg = load_config(None, [f"data.path={docs}", f"train.output_dir={run}", "model.name=scratch:tiny",
                             "data.block_size=32", "data.overlap=8", "train.max_steps=2",
                             "train.eval_every=0", "train.save_every=1", "log.tensorboard=false",
                             "log.report=false", "train.micro_batch_size=2", "train.grad_accum=1"])
    train(cfg, quiet=True)
    assert sorted(calls) == sorted(p.name for p in docs.iterdir())  # once each: tokenizer and windows
    vocab = json.loads((run / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert (run / "final" / "tokenizer.json").is_file() and len(vocab) > 256
    calls.clear()
    res = train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 3})}),
                resume=True, quiet=True)
    assert res.steps == 3 and calls == []  # the saved tokenizer and the stored windows are reused
