"""Question by question: the base's and the tuned model's greedy answers to the run's
knowledge questions.

A run that was scored (at its end, or by ``doctune eval --knowledge``) holds them in
``knowledge_answers.jsonl``: they are read from there (``right``: the expected answer is in
the reply, as the evaluation counts it). Otherwise they are computed here, as the
evaluation would (:func:`doctune.knowledge.score.greedy_answers`, the same prompts and stop
tokens; ``right``: exact match). Run as its own process: ``python -m
doctune.studio.answers RUN --out FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

PER_SPLIT = 12
"""Questions shown per split (held-out, trained): the first ones in the seeded order."""


def _questions(run: Any, per_split: int) -> list[dict[str, Any]]:
    from doctune.errors import DataError
    from doctune.knowledge.mix import load_synth

    cfg = run.config()
    folder = cfg.knowledge.synth_dir or (run.knowledge_dir if run.knowledge_dir.is_dir() else None)
    if folder is None:
        raise DataError(f"{run.path} was trained on the documents alone: tick \"Study the "
                        "docs\" on the Plan page (a chat model) and train again.")
    synth = load_synth(Path(folder))
    return [q for split in ("heldout", "trained")
            for q in sorted(synth.questions(split), key=lambda q: q["id"])[:per_split]]


def _base(tuned: Any) -> tuple[Any, Any] | None:
    """The base model and the context to run it in; None for a from-scratch full run."""
    from doctune.config import is_scratch
    from doctune.inference import load_for_inference

    if tuned.source.lora:
        return tuned.model, tuned.model.disable_adapter()
    base = tuned.source.run.base_model() if tuned.source.run else None
    if base is None or is_scratch(base):
        return None
    return load_for_inference(base, device="auto").model, contextlib.nullcontext()


def stored_answers(run: Any, per_split: int) -> list[dict[str, Any]] | None:
    """The answers of the run's last knowledge evaluation (``knowledge_answers.jsonl``), in
    :func:`answers`' shape, held-out questions first; None when it has none."""
    path = run.knowledge_answers_file
    if not path.is_file():
        return None
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    rows = []
    for split in ("heldout", "trained"):
        picked = [r for r in lines if r.get("split") == split and r.get("set") != "template"]
        for r in picked[:per_split]:
            rows.append({"question": r["question"], "answer": r["expected"], "split": split,
                         **{side: ({"text": r[f"{side}_answer"], "right": r[f"{side}_right"]}
                                   if f"{side}_answer" in r else None)
                            for side in ("base", "tuned", "open_book")}})
    return rows


def answers(run_dir: Path, *, per_split: int = PER_SPLIT) -> list[dict[str, Any]]:
    """``[{question, answer, split, base: {text, right} | None, tuned: {...}}]`` (and
    ``open_book`` when read from the run's evaluation)."""
    from doctune.inference import load_for_inference
    from doctune.knowledge.metrics import exact_match
    from doctune.knowledge.score import greedy_answers
    from doctune.rundir import RunDir

    run = RunDir.open(run_dir)
    stored = stored_answers(run, per_split)
    if stored is not None:
        return stored
    qs = _questions(run, per_split)
    system = run.config().knowledge.system_prompt
    tuned = load_for_inference(run.path, device="auto")

    def ask(model: Any) -> list[dict[str, Any]]:
        gens = greedy_answers(model, tuned.tokenizer, [q["question"] for q in qs], system=system)
        return [{"text": g.text, "right": exact_match(g.text, q["answer"]) == 1.0}
                for g, q in zip(gens, qs, strict=True)]

    by_model: dict[str, list[Any]] = {"tuned": ask(tuned.model)}
    base = _base(tuned)
    if base is not None:
        with base[1]:
            by_model["base"] = ask(base[0])
    return [{"question": q["question"], "answer": q["answer"], "split": q["split"],
             "tuned": by_model["tuned"][k],
             "base": by_model["base"][k] if "base" in by_model else None}
            for k, q in enumerate(qs)]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m doctune.studio.answers", description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-split", type=int, default=PER_SPLIT)
    args = parser.parse_args()
    from doctune.errors import DoctuneError

    try:
        rows = answers(args.run, per_split=args.per_split)
    except DoctuneError as e:
        raise SystemExit(f"error: {e}") from None
    args.out.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {len(rows)} answers to {args.out}")


if __name__ == "__main__":
    main()
