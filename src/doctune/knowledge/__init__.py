"""Knowledge from the docs: checkable facts, question/answer and rephrasing synthesis, chat
rendering with loss masks, and the arithmetic of knowledge evaluation.

Modules, bottom to top:

- :mod:`~doctune.knowledge.facts`: facts per section of a cleaned document (no model).
- :mod:`~doctune.knowledge.split`: which facts are trained, held out, or controls.
- :mod:`~doctune.knowledge.sections`: a cleaned document cut at its headings.
- :mod:`~doctune.knowledge.templates`: question/answer pairs, rephrasings and
  multiple-choice items from templates over facts.
- :mod:`~doctune.knowledge.teacher`: question/answer pairs and rephrasings from a teacher
  model behind any OpenAI-compatible chat endpoint, checked against the section, cached.
- :mod:`~doctune.knowledge.synth`: the whole docs folder to ``facts.jsonl``, ``qa.jsonl``,
  ``mc.jsonl``, ``rephrasings.jsonl`` and ``manifest.json``.
- :mod:`~doctune.knowledge.chat`: examples rendered with a tokenizer's chat template,
  with ``labels`` that put the loss on the answer only.
- :mod:`~doctune.knowledge.metrics`: exact match, token F1, multiple-choice accuracy,
  Wilson intervals, stop rate.
- :mod:`~doctune.knowledge.score`: those numbers for a loaded model.
- :mod:`~doctune.knowledge.exam`: the knowledge exam of a run, base vs tuned.
"""
