"""What the base model says before training: its answers to general prompts, replayed
(``knowledge.replay_source: self``), and its open-book answers to the trained questions
(``knowledge.self_study``): made once per run, trained with the loss on the answers, read
back on resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import doctune.knowledge.replay as replay
from doctune.cli import app
from doctune.knowledge.score import Generation
from test_knowledge_mix import DOCS
from test_recipe import _tiny_model

runner = CliRunner()
ANSWERS = {"Why do we have leap years?": "Because a year is about 365.25 days long.",
           "Write a haiku about autumn leaves.": "Red leaves drift and fall / ..."}


def test_general_prompts_are_many_and_distinct() -> None:
    prompts = replay.general_prompts()
    assert len(prompts) >= 60 and len(set(prompts)) == len(prompts)
    assert all(p == p.strip() and len(p) > 10 for p in prompts)


def test_answers_are_kept_with_whether_they_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    def greedy(model: object, tokenizer: object, prompts: list[str], **kw: object) -> list[Generation]:
        assert kw["max_new_tokens"] == replay.MAX_NEW_TOKENS
        return [Generation("fine.", [1, 2], True), Generation("rambles on and", [3] * 9, False),
                Generation("", [2], True)]

    monkeypatch.setattr("doctune.knowledge.score.generate_answers", greedy)
    got = replay.base_answers(None, None, ["a?", "b?", "c?"])
    assert got == [{"prompt": "a?", "answer": "fine.", "stopped": True},
                   {"prompt": "b?", "answer": "rambles on and", "stopped": False}]


def test_an_answer_cut_off_is_trained_without_the_end_of_turn(tmp_path: Path) -> None:
    from doctune.data.tokenize import load_tokenizer
    from doctune.knowledge.chat import end_of_turn_id
    from doctune.knowledge.mix import answer_windows

    tok = load_tokenizer(_tiny_model(tmp_path / "m", chat=True))
    pair = {"prompt": "Why is the sky blue?", "answer": "Because of Rayleigh"}
    stopped, cut, old = (answer_windows(tok, [r], block_size=128)[0]
                         for r in ({**pair, "stopped": True}, {**pair, "stopped": False}, pair))
    eot = end_of_turn_id(tok)
    assert stopped.ids[-1] == eot and old.ids.tolist() == stopped.ids.tolist()  # no flag: stopped
    assert cut.ids.tolist() == stopped.ids[:-1].tolist() and cut.loss_start == stopped.loss_start


def test_plain_text_is_trained_as_text_with_the_loss_after_the_opening(tmp_path: Path) -> None:
    from doctune.data.tokenize import load_tokenizer
    from doctune.knowledge.chat import render_document
    from doctune.knowledge.mix import answer_windows

    tok = load_tokenizer(_tiny_model(tmp_path / "m", chat=True))
    row = {"kind": "text", "prompt": "The old harbour was quiet, and", "answer": " the boats slept."}
    stopped, cut = (answer_windows(tok, [{**row, "stopped": s}], block_size=128)[0]
                    for s in (True, False))
    whole = render_document(tok, row["prompt"] + row["answer"])
    opening = render_document(tok, row["prompt"], add_eos=False).input_ids
    assert stopped.ids.tolist() == whole.input_ids  # no chat template; end of text when it stopped
    assert cut.ids.tolist() == whole.input_ids[:-1]
    assert stopped.loss_start == cut.loss_start == len(opening)
    assert tok.decode(stopped.ids[stopped.loss_start:-1].tolist()) == row["answer"]
    assert answer_windows(tok, [row], block_size=len(whole.input_ids) - 1) == []  # too long


def test_openings_are_many_distinct_and_not_the_measured_book() -> None:
    from doctune.knowledge.mix import general_text

    openings = replay.general_openings()
    assert len(openings) >= 60 and len(set(openings)) == len(openings)
    book = general_text("eval") + general_text("replay")
    assert not any(o in book for o in openings)


def _fake_answers(model: object, tokenizer: object, prompts: list[str], **kw: object) -> list[dict[str, str]]:
    return [{"prompt": p, "answer": a} for p, a in ANSWERS.items()]


def _fake_study(model: object, tokenizer: object, qa: list[dict[str, str]],
                sections: dict[object, str], **kw: object) -> list[dict[str, str]]:
    q = next(r for r in qa if r["split"] == "trained")
    return [{"id": q["id"], "question": q["question"], "expected": q["answer"],
             "answer": f"From the docs: it is {q['answer']}, as the section says."}]


def test_self_study_keeps_right_open_book_answers_of_trained_questions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from doctune.knowledge.selfstudy import study_answers

    qa = [{"id": "a", "question": "What does `server.port` default to?", "answer": "5173",
           "split": "trained", "doc": "server.md", "section": ["Server", "Options"]},
          {"id": "b", "question": "Which option defaults to `dist`?", "answer": "build.outDir",
           "split": "trained", "doc": "build.md", "section": ["Build"]},
          {"id": "c", "question": "Is 5173 the port, yes or no?", "answer": "5173",
           "split": "trained", "doc": "server.md", "section": ["Server", "Options"]},
          {"id": "d", "question": "Where does the cache live?", "answer": "node_modules/.vite",
           "split": "heldout", "doc": "cache.md", "section": ["Cache"]},
          {"id": "e", "question": "What is it?", "answer": "x", "split": "trained",
           "doc": "gone.md", "section": ["Nowhere"]}]
    sections = {("server.md", ("Server", "Options")): "`server.port` defaults to `5173`.",
                ("build.md", ("Build",)): "The build writes to `dist`.",
                ("cache.md", ("Cache",)): "It lives in `node_modules/.vite`."}
    asked: list[str] = []

    def greedy(model: object, tokenizer: object, prompts: list[str], **kw: object) -> list[Generation]:
        asked.extend(prompts)
        said = {"a": ("The default port is 5173.", True), "b": ("It is dist.", True),
                "c": ("Yes, 5173.", True)}
        return [Generation(said[key][0], [1], said[key][1]) for key in "abc"[:len(prompts)]]

    monkeypatch.setattr("doctune.knowledge.score.greedy_answers", greedy)
    got = study_answers(None, None, qa, sections)
    # trained questions with a known section only, each after its section (the open book)
    assert len(asked) == 3 and "`server.port` defaults to `5173`." in asked[0]
    assert "What does `server.port` default to?" in asked[0]
    # kept: the expected answer is in the reply (b's is not; c's question holds its answer)
    assert got == [{"id": "a", "question": "What does `server.port` default to?",
                    "answer": "The default port is 5173.", "expected": "5173"}]


def _train(tmp_path: Path, run: Path, *sets: str) -> Any:
    """`doctune train` of DOCS with a tiny chat model into ``run``: questions and replay
    mixed in, a few small steps on the CPU, and ``sets`` on top."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    model = _tiny_model(tmp_path / "m", chat=True)
    common = ["knowledge.auto=true", "knowledge.qa_share=0.3", "knowledge.replay_share=0.3",
              "data.block_size=128", "data.overlap=8", "train.micro_batch_size=2",
              "train.grad_accum=1", "train.device=cpu", "train.precision=fp32",
              "log.tensorboard=false", "log.progress=false", "log.report=false",
              "train.sample_max_new_tokens=2", "train.eval_every=0"]
    args = ["train", str(docs), "--model", str(model), "--out", str(run),
            *(x for s in [*common, *sets] for x in ("--set", s))]
    return runner.invoke(app, args)


def test_a_run_replays_the_base_models_answers_and_reads_them_back(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(replay, "base_answers", _fake_answers)
    monkeypatch.setattr("doctune.knowledge.selfstudy.study_answers", _fake_study)
    run = tmp_path / "run"
    res = _train(tmp_path, run, "knowledge.self_study=true", "train.max_steps=2",
                 "train.save_every=1")
    assert res.exit_code == 0, res.output
    assert "replay: the base model's answers to 2 general prompts" in res.output
    assert "self-study: 1 open-book answers of the base" in res.output
    studied = json.loads((run / "selfstudy.jsonl").read_text())
    assert studied["answer"].startswith("From the docs: it is ")
    assert [json.loads(x) for x in (run / "replay.jsonl").read_text().splitlines()] == \
        [{"prompt": p, "answer": a} for p, a in ANSWERS.items()]

    from doctune.config import resolve
    from doctune.rundir import RunDir
    from doctune.train.dist import DistEnv
    from doctune.train.inputs import load_inputs

    folder = RunDir.open(run)
    inputs = load_inputs(resolve(folder.config()), DistEnv(), folder, resume=True)
    replayed = [inputs.train[i] for i in range(len(inputs.train))
                if inputs.train.source_of(i) == "replay"]
    assert replayed and {inputs.tokenizer.decode(w.ids[w.loss_start:].tolist(),
                                                 skip_special_tokens=True).strip()
                         for w in replayed} == set(ANSWERS.values())  # loss on the answers only

    qa = [inputs.train[i] for i in range(len(inputs.train)) if inputs.train.source_of(i) == "qa"]
    assert any(studied["answer"] in inputs.tokenizer.decode(w.ids[w.loss_start:].tolist())
               for w in qa)  # the studied answer is trained, as the answer of its question

    def never(*a: object, **kw: object) -> None:
        raise AssertionError("a resumed run must read its answers back, not make them again")

    monkeypatch.setattr(replay, "base_answers", never)
    monkeypatch.setattr("doctune.knowledge.selfstudy.study_answers", never)
    res = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.max_steps=3"])
    assert res.exit_code == 0, res.output
    # study data that changed under the checkpoint (here a replayed answer) is refused
    lines = (run / "replay.jsonl").read_text().splitlines()
    first = {**json.loads(lines[0]), "answer": "Another answer."}
    (run / "replay.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    res = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.max_steps=4"])
    assert res.exit_code != 0 and "cannot resume exactly" in res.output
    assert "data_fingerprint" in res.output


def test_text_replay_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from doctune.config import load_config
    from doctune.rundir import RunDir
    from doctune.train.dist import DistEnv
    from doctune.train.inputs import _from_base
    from doctune.train.knowledge import KnowledgeSetup

    monkeypatch.setattr(replay, "base_answers", _fake_answers)
    model = _tiny_model(tmp_path / "m", chat=True)
    from doctune.data.tokenize import load_tokenizer

    tok = load_tokenizer(model)
    for sets, made in ((["knowledge.replay_source=text"], False), ([], True)):
        cfg = load_config(None, [f"model.name={model}", "knowledge.replay_share=0.1",
                                 "train.device=cpu", *sets])
        folder = RunDir(tmp_path / f"run{made}")
        folder.path.mkdir()
        got, studied = _from_base(cfg, DistEnv(), folder, tok, KnowledgeSetup(None, {}))
        assert (got is not None) == made and studied is None
        assert not folder.replay_file.is_file()  # made when the mix says how many it replays
        if got is not None:
            assert got(3) == [{"prompt": p, "answer": a} for p, a in ANSWERS.items()]
            assert folder.replay_file.is_file()


def test_the_base_answers_only_the_prompts_the_mix_replays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[str]] = []

    def answers(model: object, tokenizer: object, prompts: list[str], **kw: object) -> list[dict[str, str]]:
        asked.append(prompts)
        return [{"prompt": p, "answer": "yes"} for p in prompts]

    monkeypatch.setattr(replay, "base_answers", answers)
    monkeypatch.setattr("doctune.inference.load_for_inference",
                        lambda *a, **kw: type("M", (), {"model": None,
                                                        "device": torch.device("cpu")})())
    for windows, want in ((3, 7), (40, 50), (1000, len(replay.general_prompts()))):
        out = tmp_path / f"r{windows}.jsonl"
        replay.make_answers("m", None, device="cpu", replay=out,
                            prompts=replay.prompts_for(windows))
        assert asked[-1] == replay.general_prompts()[:want]
        assert len(replay.read_answers(out)) == want
    # sampled: a fresh answer for every replayed window, the prompts asked again in turn
    prompts = replay.general_prompts()
    replay.make_answers("m", None, device="cpu", replay=tmp_path / "s.jsonl",
                        prompts=replay.prompts_for(1000, sampled=True), temperature=1.0)
    assert asked[-1] == [prompts[k % len(prompts)] for k in range(1250)]


def test_replayed_windows_split_into_answers_and_plain_text(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], bool]] = []

    def answers(model: object, tokenizer: object, prompts: list[str], **kw: object) -> list[dict[str, object]]:
        calls.append((prompts, bool(kw.get("plain"))))
        kind = {"kind": "text"} if kw.get("plain") else {}
        return [{**kind, "prompt": p, "answer": " on."} for p in prompts]

    monkeypatch.setattr(replay, "base_answers", answers)
    monkeypatch.setattr("doctune.inference.load_for_inference",
                        lambda *a, **kw: type("M", (), {"model": None,
                                                        "device": torch.device("cpu")})())
    assert replay.split_windows(40, 0.5) == (20, 20)
    assert replay.split_windows(7, 0.0) == (7, 0) and replay.split_windows(7, 1.0) == (0, 7)
    assert replay.prompts_for(0, sampled=True) == 0
    chat, plain = replay.split_windows(100, 0.25)
    out = tmp_path / "r.jsonl"
    replay.make_answers("m", None, device="cpu", replay=out, temperature=1.0,
                        prompts=replay.prompts_for(chat, sampled=True),
                        openings=replay.prompts_for(plain, sampled=True, plain=True))
    openings = replay.general_openings()
    prompts = replay.general_prompts()
    assert calls == [([prompts[k % len(prompts)] for k in range(93)], False),  # 75 and a quarter
                     ([openings[k % len(openings)] for k in range(31)], True)]  # 25 and a quarter
    rows = replay.read_answers(out)
    assert sum(r.get("kind") == "text" for r in rows) == 31 and len(rows) == 124
    # all plain text: no prompt is answered in the chat template
    calls.clear()
    replay.make_answers("m", None, device="cpu", replay=out, temperature=1.0,
                        prompts=replay.prompts_for(0, sampled=True),
                        openings=replay.prompts_for(5, sampled=True, plain=True))
    assert calls == [(openings[:9], True)]
    # a run asks for the split its config gives, and says so
    from doctune.config import load_config
    from doctune.data.tokenize import load_tokenizer
    from doctune.rundir import RunDir
    from doctune.train.dist import DistEnv
    from doctune.train.inputs import _from_base
    from doctune.train.knowledge import KnowledgeSetup

    model = _tiny_model(tmp_path / "m", chat=True)
    cfg = load_config(None, [f"model.name={model}", "knowledge.replay_share=0.1",
                             "knowledge.replay_plain_share=0.5", "train.device=cpu"])
    folder = RunDir(tmp_path / "run")
    folder.path.mkdir()
    got, _ = _from_base(cfg, DistEnv(), folder, load_tokenizer(model), KnowledgeSetup(None, {}))
    assert got is not None
    calls.clear()
    rows = got(10)
    assert [(len(p), plain) for p, plain in calls] == [(9, False), (9, True)]
    assert sum(r.get("kind") == "text" for r in rows) == 9


def test_sampled_replay_is_seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same seed gives the same sampled answers (a resumed or repeated run replays the
    same), another seed others; the caller's random state is left as it was."""
    seen: list[tuple[float, float]] = []

    def answers(model: object, tokenizer: object, prompts: list[str], **kw: object) -> list[dict[str, object]]:
        seen.append((kw["temperature"], float(torch.rand(()))))
        return [{"prompt": p, "answer": f"{seen[-1][1]:.6f}"} for p in prompts]

    monkeypatch.setattr(replay, "base_answers", answers)
    monkeypatch.setattr("doctune.inference.load_for_inference",
                        lambda *a, **kw: type("M", (), {"model": None,
                                                        "device": torch.device("cpu")})())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        replay.make_answers("m", None, device="cpu", replay=tmp_path / f"{name}.jsonl",
                            prompts=3, temperature=0.8, seed=seed)
    assert torch.equal(torch.get_rng_state(), before)
    got = {n: replay.read_answers(tmp_path / f"{n}.jsonl") for n in "abc"}
    assert got["a"] == got["b"] != got["c"] and {t for t, _ in seen} == {0.8}


@pytest.mark.parametrize("lora", [True, False])
def test_replay_trained_towards_the_bases_distribution_with_an_adapter(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lora: bool) -> None:
    import doctune.train.loss as loss

    monkeypatch.setattr(replay, "base_answers", _fake_answers)
    distilled: list[torch.Tensor] = []
    kl = loss.distill_loss

    def spy(m: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor,
            **kw: bool) -> tuple[torch.Tensor, torch.Tensor]:
        distilled.append(ids)
        return kl(m, ids, labels, **kw)

    monkeypatch.setattr(loss, "distill_loss", spy)
    run = tmp_path / "run"
    res = _train(tmp_path, run, "knowledge.replay_loss=kl", f"lora.enabled={str(lora).lower()}",
                 "lora.r=4", "train.max_steps=6")
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    if not lora:  # every weight trains: no base to compare with, the replay's tokens are trained
        assert "trained by cross-entropy: knowledge.replay_loss kl needs LoRA" in said
        assert distilled == []
        return
    assert "trained by KL to the base's distribution" in said

    from doctune.config import resolve
    from doctune.rundir import RunDir
    from doctune.train.batches import BatchOrder, window_lengths
    from doctune.train.dist import DistEnv
    from doctune.train.inputs import load_inputs

    folder = RunDir.open(run)
    cfg = resolve(folder.config())
    inputs = load_inputs(cfg, DistEnv(), folder, resume=True)
    windows = inputs.train
    order = BatchOrder(len(windows), 2, cfg.train.seed, lengths=window_lengths(windows),
                       step_windows=2)
    # exactly the replayed windows of the 6 steps went to the KL, in order, and nothing else
    picked = [i for k in range(6) for i in order.indices(k)]
    replayed = [windows[i].ids.tolist() for i in picked if windows.source_of(i) == "replay"]
    rows = [row.tolist() for ids in distilled for row in ids]
    assert replayed and len(rows) == len(replayed)
    assert [r[:len(w)] for r, w in zip(rows, replayed, strict=True)] == replayed
    assert all(x == inputs.pad_id for r, w in zip(rows, replayed, strict=True) for x in r[len(w):])
