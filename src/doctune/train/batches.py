"""From token windows to batches: a seeded, resumable order and the collate step.

The order is a pure function of (seed, position): sample ``i`` of the endless stream is
``perm(epoch = i // n)[i % n]``, each epoch shuffled by its own seeded generator. A run that
resumes at micro-step ``k`` therefore sees exactly the batches an uninterrupted run would.

With the windows' lengths (``train.group_by_length``, as the Hugging Face Trainer's option
of that name does) each epoch's shuffled order is regrouped so that an optimizer step holds
windows of about one length: the shuffled order is cut into groups of :data:`GROUP_BATCHES`
steps, each group sorted by length and cut into its steps, which are shuffled again. A
knowledge mix puts questions of a few dozen tokens beside whole windows; mixed at random
nearly every batch is padded to the longest, grouped the short ones make short batches.
Grouping by step, not by micro-batch, keeps each step's windows the same however the step is
split (4 micro-batches of 1 == 1 of 4 == 2 processes x 2 of 1). Still a pure function of
(seed, position).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from doctune.data.store import IGNORE_INDEX

if TYPE_CHECKING:
    import numpy as np
    import torch


class WindowLike(Protocol):
    """What a token window offers (see ``doctune.data.store.Window``)."""

    @property
    def ids(self) -> np.ndarray: ...
    @property
    def loss_start(self) -> int: ...


class WindowsLike(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> WindowLike: ...


GROUP_BATCHES = 16
"""Optimizer steps per length group: the order stays random at the scale of a few dozen
steps, while each batch is padded only to windows of about its own length."""


class BatchOrder:
    """Which windows make up micro-batch ``k``, for any ``k``, without state.

    ``lengths`` (one per window): group each epoch's order by length, in units of
    ``step_windows`` (the windows of one optimizer step over all processes; default one
    micro-batch), see the module docstring. None, windows all of one length, or steps of one
    window keep the plain shuffled order."""

    def __init__(self, n_windows: int, micro_batch_size: int, seed: int,
                 lengths: Sequence[int] | None = None, step_windows: int | None = None) -> None:
        if n_windows <= 0:
            raise ValueError("BatchOrder needs at least one window")
        if lengths is not None and len(lengths) != n_windows:
            raise ValueError(f"{len(lengths)} lengths for {n_windows} windows")
        self.n = n_windows
        self.size = micro_batch_size
        self.seed = seed
        self.unit = step_windows or micro_batch_size
        if self.unit % micro_batch_size:
            raise ValueError(f"a step of {self.unit} windows is not whole micro-batches of "
                             f"{micro_batch_size}")
        self.lengths = (list(lengths) if lengths is not None and len(set(lengths)) > 1
                        and self.unit > 1 else None)
        self._epoch = -1
        self._perm: list[int] = []

    def _perm_of(self, epoch: int) -> list[int]:
        import torch

        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=g).tolist()
            if self.lengths is not None:
                self._perm = self._grouped(self._perm, epoch, g)
            self._epoch = epoch
        return self._perm

    def _grouped(self, perm: list[int], epoch: int, g: torch.Generator) -> list[int]:
        """``perm`` regrouped by length, along the step boundaries of ``epoch`` (an epoch
        whose length is not a multiple of the step starts inside a step: those first
        positions, which finish the previous epoch's step, stay)."""
        import torch

        assert self.lengths is not None
        lengths, size = self.lengths, self.unit
        first = (-epoch * self.n) % size  # where this epoch's first whole batch starts
        out = perm[:first]
        group = size * GROUP_BATCHES
        for lo in range(first, self.n, group):
            chunk = sorted(perm[lo:lo + group], key=lambda i: -lengths[i])  # stable
            batches = [chunk[k:k + size] for k in range(0, len(chunk), size)]
            whole = len(chunk) // size  # a last, partial batch stays last: it joins the next
            for k in torch.randperm(whole, generator=g).tolist():
                out += batches[k]
            out += [i for b in batches[whole:] for i in b]
        return out

    def indices(self, micro_step: int) -> list[int]:
        """Window indices of micro-batch number ``micro_step`` (0-based)."""
        out = []
        for i in range(micro_step * self.size, (micro_step + 1) * self.size):
            out.append(self._perm_of(i // self.n)[i % self.n])
        return out

    def epoch_of(self, micro_step: int) -> float:
        """Epochs completed (fractional) after ``micro_step`` micro-batches."""
        return micro_step * self.size / self.n


def window_lengths(windows: WindowsLike) -> list[int]:
    """Each window's token count (read from a window index when the set has one)."""
    lengths = getattr(windows, "lengths", None)
    if callable(lengths):
        return [int(x) for x in lengths()]
    return [len(windows[i].ids) for i in range(len(windows))]


LENGTH_STEP = 32
"""With ``block_size``, :func:`collate` pads a batch to a multiple of this many tokens. A
mixed run's batches (short questions beside whole windows) would otherwise come in every
length up to ``block_size``; on a CPU in bf16 each new shape leaves compiled kernels and
their buffers in oneDNN's caches for good (see ``doctune.train.loss.ROW_STEP``). 32, not
64: questions of 65-96 tokens (a chat template's system prompt, a question, a short answer)
are the most common kind in a study run, and 64 padded each to 128 (the README quickstart's
batches: 8% fewer tokens computed, the same 1.8 GB resident at the end)."""


def collate(windows: Sequence[WindowLike], pad_id: int, *,
            block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack windows into ``(input_ids, labels)``, both (B, T) int64, T = longest window,
    or with ``block_size`` that rounded up to a multiple of :data:`LENGTH_STEP` (never past
    ``block_size``), so that training sees a handful of shapes.

    Short windows are padded on the right (causal attention never lets a real token see
    the padding after it, so no attention mask is needed); padding and the context-only
    overlap (positions before ``loss_start``) get ``IGNORE_INDEX`` labels.
    """
    import torch

    t = max(len(w.ids) for w in windows)
    if block_size is not None:
        t = padded_length(t, block_size)
    input_ids = torch.full((len(windows), t), pad_id, dtype=torch.long)
    labels = torch.full((len(windows), t), IGNORE_INDEX, dtype=torch.long)
    for row, w in enumerate(windows):
        ids = torch.as_tensor(w.ids.astype("int64", copy=False))
        n = ids.numel()
        input_ids[row, :n] = ids
        labels[row, w.loss_start:n] = ids[w.loss_start:]
    return input_ids, labels


def padded_length(n: int, block_size: int) -> int:
    """The length :func:`collate` pads a batch whose longest window has ``n`` tokens to."""
    return max(n, min(-(-n // LENGTH_STEP) * LENGTH_STEP, block_size))


def mean_padded_length(lengths: Sequence[int], block_size: int) -> float:
    """The mean of :func:`padded_length` over windows of ``lengths``: the tokens a window
    costs at least in a batch (a batch of longer windows pads it further)."""
    return sum(padded_length(n, block_size) for n in lengths) / max(len(lengths), 1)


def count_loss_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry loss after the one-position shift (what the loss sums over)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
