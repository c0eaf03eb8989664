"""Chat with a run and with its base, streamed: :func:`doctune.inference.load_for_inference`
and :func:`doctune.generate.generate_text`, as ``doctune generate`` uses them.

A LoRA run answers as its base with the adapter switched off (one model in memory); a full
fine-tune's base is loaded on its own; a from-scratch run has no pretrained base to ask.
Generations run one at a time in a worker thread; each piece of text goes to a queue that
the server streams to the page.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from doctune.errors import ModelError
from doctune.sampling import Sampling

_DONE = object()


class Chats:
    """Loaded models (the last run asked about) and the lock that serialises generation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, str], Any] = {}

    def _tuned(self, run: Path) -> Any:
        from doctune.inference import load_for_inference

        key = (str(run), "tuned")
        if key not in self._loaded:
            self._loaded.clear()  # one run's models at a time: memory is the scarce thing
            self._loaded[key] = load_for_inference(run, device="auto")
        return self._loaded[key]

    def _base(self, run: Path) -> tuple[Any, contextlib.AbstractContextManager[Any]]:
        """The base model (and the context to generate in) of the run at ``run``."""
        from doctune.config import is_scratch
        from doctune.inference import load_for_inference

        tuned = self._tuned(run)
        if tuned.source.lora:
            return tuned, tuned.model.disable_adapter()
        key = (str(run), "base")
        if key not in self._loaded:
            base = tuned.source.run.base_model() if tuned.source.run else None
            if base is None or is_scratch(base):
                raise ModelError("This run was trained from scratch: it has no pretrained base "
                                 "to compare with.")
            self._loaded[key] = load_for_inference(base, device="auto")
        return self._loaded[key], contextlib.nullcontext()

    def stream(self, run: Path, side: str, message: str, *, chat: bool | None = None,
               max_new_tokens: int = 80) -> Iterator[str]:
        """Yield the answer of ``side`` (``tuned`` or ``base``) to ``message``, piece by piece.

        ``chat=None`` uses the chat template when the model has one, else continues the text."""
        pieces: queue.Queue[object] = queue.Queue()

        def work() -> None:
            try:
                with self._lock:
                    self._generate(run, side, message, chat, max_new_tokens, pieces.put)
            except Exception as e:
                pieces.put(e)
            finally:
                pieces.put(_DONE)

        threading.Thread(target=work, daemon=True).start()
        while (item := pieces.get()) is not _DONE:
            if isinstance(item, Exception):
                raise item
            yield str(item)

    def _generate(self, run: Path, side: str, message: str, chat: bool | None,
                  max_new_tokens: int, emit: Any) -> None:
        from doctune.generate import generate_text
        from doctune.modeling import chat_template

        if side == "base":
            loaded, ctx = self._base(run)
        else:
            loaded, ctx = self._tuned(run), contextlib.nullcontext()
        use_chat = chat if chat is not None else chat_template(loaded.tokenizer) is not None
        sampling = Sampling(temperature=0.0, max_new_tokens=max_new_tokens, seed=0)
        with ctx:
            if not use_chat:
                emit(message)  # a completion continues the prompt, as `doctune generate` shows
            generate_text(loaded, message, sampling, on_text=emit, chat=use_chat)
