"""The dev split that chooses which step becomes ``final/``: which facts, when it asks,
which step it keeps, and that the knowledge evaluation never reports its facts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from doctune.config import Config
from doctune.rundir import RunDir
from doctune.train.choose import (
    DevChooser,
    clearly_worse,
    is_dev,
    right_option_probabilities,
)
from test_recipe import _train, docs, models  # noqa: F401 (fixtures)


def test_the_dev_split_is_a_fixed_share_of_the_facts() -> None:
    ids = [f"fact-{k}" for k in range(2000)]
    dev = [f for f in ids if is_dev(f, seed=7, fraction=0.3)]
    assert dev == [f for f in ids if is_dev(f, seed=7, fraction=0.3)]  # pure
    assert 0.27 < len(dev) / len(ids) < 0.33
    assert set(dev) <= {f for f in ids if is_dev(f, seed=7, fraction=0.5)}  # nested
    assert dev != [f for f in ids if is_dev(f, seed=8, fraction=0.3)]


def test_each_question_scores_the_probability_of_its_right_option() -> None:
    scored = [[(math.log(3), 2), (0.0, 5)], [(0.0, 1), (0.0, 1), (0.0, 1), (0.0, 1)]]
    assert right_option_probabilities(scored, [0, 2]) == pytest.approx([0.75, 0.25])
    # large log-likelihoods do not overflow
    assert right_option_probabilities([[(-900.0, 1), (-1000.0, 1)]], [0]) == pytest.approx([1.0])


def test_clearly_worse_takes_two_standard_errors_of_the_paired_difference() -> None:
    best = [0.5] * 16
    assert not clearly_worse([0.5] * 16, best)
    # every question a little worse: a consistent difference is clear
    assert clearly_worse([0.48] * 15 + [0.47], best)
    # the same mean difference, from two questions out of 16: noise
    assert not clearly_worse([0.5] * 14 + [0.34, 0.34], best)
    assert not clearly_worse([0.1], [0.9])  # one question tells nothing


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = torch.nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.adapter = torch.nn.Linear(2, 2)


def _chooser(folder: Path, *, checks: int = 4, main: bool = True) -> DevChooser:
    cfg = Config.model_validate({"knowledge": {"dev_checks": checks}})
    model = _Model()
    run: Any = SimpleNamespace(cfg=cfg, folder=RunDir(folder), env=SimpleNamespace(is_main=main),
                               model=SimpleNamespace(model=model))
    return DevChooser(run, ["f1"], [])


@pytest.mark.parametrize(("checks", "total", "steps"), [
    (4, 10, [2, 5, 8, 10]), (1, 7, [7]), (4, 3, [1, 2, 3]), (3, 100, [33, 67, 100])])
def test_checks_are_evenly_spaced_and_end_at_the_last_step(tmp_path: Path, checks: int,
                                                          total: int, steps: list[int]) -> None:
    chooser = _chooser(tmp_path, checks=checks)
    assert [s for s in range(1, total + 1) if chooser.due(s, total)] == steps


def test_the_last_check_not_clearly_worse_than_the_best_is_chosen(tmp_path: Path) -> None:
    chooser = _chooser(tmp_path)
    model = chooser.run.model.model
    kept: dict[int, torch.Tensor] = {}
    noisy = [0.5] * 14 + [0.3, 0.34]  # lower than step 4 on two questions: noise
    for step, probs in [(2, [0.4] * 16), (4, [0.5] * 16), (6, noisy), (8, [0.3] * 16)]:
        with torch.no_grad():
            model.adapter.weight.fill_(step)  # the weights of this step
        kept[step] = model.adapter.weight.detach().clone()
        chooser.consider(step, probs, 0.5)
    # step 6 is not clearly worse than step 4, the best, and later: chosen; step 8 is
    assert chooser.best is not None and chooser.top is not None
    assert (chooser.best.step, chooser.top.step) == (6, 4)
    fact = chooser.restore(8)
    assert fact["step"] == 6 and "than the best one (step 4: score 0.500" in fact["why"]
    assert "the last step scored 0.300" in fact["why"]
    assert [c["step"] for c in fact["checks"]] == [2, 4, 6, 8]
    assert torch.equal(model.adapter.weight, kept[6])  # the chosen step's weights are back
    assert torch.equal(load_file(str(chooser.file))["adapter.weight"], kept[6])
    assert "frozen.weight" not in load_file(str(chooser.file))  # trainable weights only
    # a resumed run reads its choice back from the file
    again = _chooser(tmp_path)
    assert again.best is not None and again.top is not None
    assert (again.best.step, again.top.step, again.top.probs) == (6, 4, (0.5,) * 16)
    assert again.best.score == pytest.approx(sum(noisy) / 16)


def test_a_best_check_that_is_also_the_top_one_is_said_once(tmp_path: Path) -> None:
    chooser = _chooser(tmp_path)
    for step, probs in [(2, [0.4] * 16), (4, [0.5] * 16)]:
        chooser.consider(step, probs, 0.5)
    fact = chooser.restore(4)
    assert (fact["step"], fact["why"]) == (
        4, "the best of 2 checks on the 0 dev questions (score 0.500, multiple choice 50%)")


def test_only_the_main_process_writes_the_choice(tmp_path: Path) -> None:
    chooser = _chooser(tmp_path, main=False)
    chooser.consider(2, [0.4, 0.5], 0.5)
    assert chooser.best is not None and chooser.best.step == 2 and not chooser.file.exists()


def test_a_study_run_keeps_the_best_step_and_leaves_its_dev_facts_out_of_the_exam(
        models: dict[str, Path], docs: Path, tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    out = _train(docs, models["chat"], run, "--set", "train.max_steps=4",
                 "--set", "knowledge.heldout_fraction=0.8", "--set", "knowledge.dev_fraction=0.9")
    assert "recipe: study" in out
    choice = json.loads((run / "run.json").read_text())["final_choice"]
    assert [c["step"] for c in choice["checks"]] == [1, 2, 3, 4]
    assert choice["dev_questions"] >= 8 and choice["step"] in {1, 2, 3, 4}
    assert f"(step {choice['step']} of 4: chosen by 4 checks on " in out
    with safe_open(str(run / "best" / "weights.safetensors"), framework="pt") as f:
        assert int(f.metadata()["step"]) == choice["step"]
        best = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    final = load_file(str(next((run / "final").glob("*.safetensors"))))
    shared = set(best) & set(final)
    assert shared and all(torch.equal(best[k], final[k]) for k in shared)
    # the dev facts chose the step: none of their questions is reported
    dev = set(choice["dev_facts"])
    fact_of = {json.loads(line)["id"]: json.loads(line)["fact_id"]
               for line in (run / "knowledge" / "qa.jsonl").read_text().splitlines()}
    answered = [json.loads(line) for line in (run / "knowledge_answers.jsonl").read_text().splitlines()]
    assert answered and not any(fact_of.get(a["id"]) in dev for a in answered)
    assert json.loads((run / "knowledge_eval.json").read_text())["dev_facts_left_out"] == len(dev)


def test_too_few_dev_questions_leave_the_last_step_final(models: dict[str, Path], docs: Path,  # noqa: F811
                                                         tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(docs, models["chat"], run, "--set", "knowledge.dev_fraction=0.01")
    choice = json.loads((run / "run.json").read_text())["final_choice"]
    assert choice["step"] == 2 and "dev questions" in choice["why"] and "last step" in choice["why"]
    assert not (run / "best").exists()
