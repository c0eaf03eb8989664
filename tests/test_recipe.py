"""Which recipe ``doctune train`` trains: the study recipe for a chat model, the documents
alone otherwise, and the run's last lines saying what the model learnt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from doctune.cli import app
from doctune.config import load_config
from doctune.knowledge.recipe import STUDY, choose_recipe
from test_knowledge_mix import DOCS

runner = CliRunner()


def _tiny_model(folder: Path, *, chat: bool) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    from doctune.knowledge.chat import prepare_chat_tokenizer
    from doctune.modeling import train_tokenizer

    tok = train_tokenizer(DOCS.values(), 400)
    if chat:
        prepare_chat_tokenizer(tok)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=256,
                               vocab_size=len(tok), bos_token_id=tok.eos_token_id,
                               eos_token_id=tok.eos_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipe-models")
    return {"chat": _tiny_model(root / "chat", chat=True),
            "plain": _tiny_model(root / "plain", chat=False)}


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recipe-docs")
    for name, text in DOCS.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_a_chat_model_gets_the_study_recipe(models: dict[str, Path], docs: Path) -> None:
    cfg = load_config(None, [f"model.name={models['chat']}", f"data.path={docs}"])
    recipe = choose_recipe(cfg)
    assert recipe.name == "study" and recipe.overrides == STUDY
    applied = load_config(None, [f"model.name={models['chat']}", f"data.path={docs}"],
                          recipe.overrides).knowledge
    assert applied.auto and applied.amplify == STUDY["knowledge.amplify"] > 1
    assert applied.qa_share > 0 and applied.control_fraction == 0  # every page trained
    assert "--docs-only" in recipe.reason


@pytest.mark.parametrize(("sets", "docs_only", "name", "why"), [
    ([], True, "docs", "--docs-only"),
    (["knowledge.replay_share=0.1"], False, "custom", "knowledge"),
])
def test_the_user_choice_wins(models: dict[str, Path], docs: Path, sets: list[str],
                              docs_only: bool, name: str, why: str) -> None:
    cfg = load_config(None, [f"model.name={models['chat']}", f"data.path={docs}", *sets])
    recipe = choose_recipe(cfg, docs_only=docs_only)
    assert (recipe.name, recipe.overrides) == (name, {}) and why in recipe.reason


def test_split_and_evaluation_keys_keep_the_study_recipe_with_the_users_values(
        models: dict[str, Path], docs: Path) -> None:
    sets = ["knowledge.heldout_fraction=0.5", "knowledge.control_fraction=0.2",
            "knowledge.dev_fraction=0.5"]
    cfg = load_config(None, [f"model.name={models['chat']}", f"data.path={docs}", *sets])
    recipe = choose_recipe(cfg)
    assert recipe.name == "study"
    assert recipe.overrides == {k: v for k, v in STUDY.items()
                                if k != "knowledge.control_fraction"}
    k = load_config(None, [f"model.name={models['chat']}", f"data.path={docs}", *sets],
                    recipe.overrides).knowledge
    assert (k.heldout_fraction, k.control_fraction, k.dev_fraction) == (0.5, 0.2, 0.5)
    assert k.auto and k.mix == "once"


def test_a_model_without_chat_template_trains_the_docs(models: dict[str, Path],
                                                       docs: Path) -> None:
    for model in (str(models["plain"]), "scratch:tiny"):
        recipe = choose_recipe(load_config(None, [f"model.name={model}", f"data.path={docs}"]))
        assert recipe.name == "docs" and recipe.overrides == {}
        assert "chat template" in recipe.reason


def _train(docs: Path, model: Path, out: Path, *extra: str) -> str:
    sets = ["data.block_size=128", "data.overlap=8", "train.max_steps=2",
            "train.micro_batch_size=2", "train.grad_accum=1", "train.device=cpu",
            "train.precision=fp32", "log.tensorboard=false", "log.progress=false",
            "train.sample_max_new_tokens=2", "train.eval_every=0"]
    res = runner.invoke(app, ["train", str(docs), "--model", str(model), "--out", str(out),
                              *(x for s in sets for x in ("--set", s)), *extra])
    assert res.exit_code == 0, res.output
    return res.output


def test_train_studies_and_ends_with_what_the_model_learnt(
        models: dict[str, Path], docs: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import doctune.train.finish as finish

    monkeypatch.setattr(finish, "END_OF_RUN_TRAINED", 5)
    # half the facts held out: these few pages then hold several held-out answers of a kind,
    # which the held-out multiple-choice questions take their options from
    out = _train(docs, models["chat"], tmp_path / "run", "--set", "knowledge.heldout_fraction=0.5")
    assert "recipe: study: documents + their facts restated 5x + questions + its own sampled answers" in out
    assert "knowledge mix per pass" in out
    # the last lines: held-out questions before -> after, and one of them answered twice
    assert "held-out questions (never trained)" in out and "right answer in the reply" in out
    assert "multiple choice" in out and "general English perplexity" in out
    asked = [line for line in out.splitlines() if line.strip().startswith("asked:")]
    assert len(asked) == 1 and "before:" in out and "after:" in out
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["knowledge"]["auto"] is True and saved["knowledge"]["amplify"] == 5.0
    manifest = json.loads((tmp_path / "run" / "knowledge" / "manifest.json").read_text())
    assert manifest["control_docs"] == [] and (tmp_path / "run" / "knowledge_eval.json").is_file()
    assert (tmp_path / "run" / "knowledge" / "amplified.jsonl").stat().st_size > 0
    # what takes a while before the first step is said; the end leaves the blank-filling
    # comparison to `doctune eval --knowledge`
    assert "making the study data from the docs" in out
    assert "the base model answers general prompts (replayed against forgetting)" in out
    tuned = json.loads((tmp_path / "run" / "knowledge_eval.json").read_text())["tuned"]
    assert "heldout_contains" in tuned and not any("template" in k for k in tuned)
    # trained facts are asked fewer questions than held-out ones: enough to see it took
    qa = [json.loads(x) for x in (tmp_path / "run" / "knowledge" / "qa.jsonl").read_text().splitlines()]
    trained = sum(q["split"] == "trained" and q["source"] == "natural" for q in qa)
    assert trained > 5 and tuned["trained_em_n"] == 5


def test_docs_only_trains_the_documents_alone(models: dict[str, Path], docs: Path,
                                              tmp_path: Path) -> None:
    out = _train(docs, models["chat"], tmp_path / "run", "--docs-only")
    assert "recipe: docs: --docs-only" in out
    assert "knowledge mix" not in out and "held-out questions" not in out
    assert not (tmp_path / "run" / "knowledge").exists()


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_the_end_of_run_scores_the_model_in_memory_as_eval_does_from_disk(
        models: dict[str, Path], docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        lora: bool) -> None:
    """The run's own evaluation scores the model it trained, not a second copy loaded from
    ``final/`` (a GGUF base dequantised again, and twice the memory); its numbers are those
    ``doctune eval --knowledge`` computes from ``final/`` afterwards."""
    import doctune.inference as inference
    import doctune.train.finish as finish
    from doctune.knowledge.exam import evaluate_run

    monkeypatch.setattr(finish, "END_OF_RUN_TRAINED", 5)
    loads: list[object] = []
    real = inference.load_for_inference
    monkeypatch.setattr(inference, "load_for_inference",
                        lambda *a, **k: loads.append(a) or real(*a, **k))
    run = tmp_path / "run"
    _train(docs, models["chat"], run, *(["--lora"] if lora else []), "--set", "train.max_steps=3")
    assert json.loads((run / "run.json").read_text())["lora"] is lora
    # nothing loaded from the run folder at its end (the base's replayed answers load the base)
    assert [a for a in loads if str(run) in str(a[0])] == []
    saved = json.loads((run / "knowledge_eval.json").read_text())
    again = evaluate_run(run, device="cpu", max_questions=finish.END_OF_RUN_QUESTIONS,
                         templates=False, max_trained=5)
    assert [str(a[0]) for a in loads][-1] == str(run)
    for name in ("base", "open_book", "tuned"):
        assert saved[name].keys() == again[name].keys() and saved[name], name
        for key, value in saved[name].items():
            if isinstance(value, float):
                assert value == pytest.approx(again[name][key], rel=1e-4), (name, key)
            else:
                assert value == again[name][key], (name, key)
    answers = [json.loads(x) for x in (run / "knowledge_answers.jsonl").read_text().splitlines()]
    assert answers == json.loads(json.dumps(again["answers"]))


def test_a_sharded_model_is_scored_from_final() -> None:
    """Rank 0 does not hold a sharded (FSDP) model whole: its evaluation loads ``final/``."""
    from types import SimpleNamespace

    from doctune.train.finish import trained_model

    with trained_model(SimpleNamespace(env=SimpleNamespace(parallel="fsdp"))) as loaded:  # type: ignore[arg-type]
        assert loaded is None
