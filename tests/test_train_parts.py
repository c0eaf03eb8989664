"""Parts of the training loop: batch order, collate, LR schedule, device and precision."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from doctune.data.store import IGNORE_INDEX
from doctune.device import Precision, resolve_device, resolve_precision
from doctune.errors import ConfigError
from doctune.train.batches import (
    GROUP_BATCHES,
    BatchOrder,
    collate,
    count_loss_tokens,
    window_lengths,
)
from doctune.train.optim import lr_lambda


@dataclass
class W:
    ids: np.ndarray
    loss_start: int = 0


def test_batch_order_is_a_seeded_permutation_per_epoch() -> None:
    order = BatchOrder(10, 3, seed=1)
    seen = [i for k in range(10) for i in order.indices(k)]  # 30 samples = 3 epochs
    for e in range(3):
        assert sorted(seen[e * 10:(e + 1) * 10]) == list(range(10))
    assert seen[:10] != seen[10:20]  # each epoch reshuffled
    again = BatchOrder(10, 3, seed=1)
    assert [again.indices(k) for k in (7, 2, 9)] == [order.indices(k) for k in (7, 2, 9)]
    assert BatchOrder(10, 3, seed=2).indices(0) != order.indices(0)
    assert order.epoch_of(5) == 1.5


@pytest.mark.parametrize("n", [200, 203])  # a multiple of the batch size, and not
def test_grouped_order_batches_windows_of_one_length_and_keeps_every_epoch_whole(n: int) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.choice([40, 256], size=n).tolist()  # questions beside whole windows
    order = BatchOrder(n, 4, seed=3, lengths=lengths)
    steps = -(-3 * n // 4)
    batches = [order.indices(k) for k in range(steps)]
    stream = [i for b in batches for i in b]
    for e in range(3):  # each epoch still shows every window once
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))
    mixed = sum(len({lengths[i] for i in b}) > 1 for b in batches)
    plain = BatchOrder(n, 4, seed=3)
    mixed_plain = sum(len({lengths[i] for i in plain.indices(k)}) > 1 for k in range(steps))
    # at most one mixed batch per group of GROUP_BATCHES (and per epoch seam); at random most are
    assert mixed <= 3 * (-(-n // (4 * GROUP_BATCHES)) + 1) < mixed_plain
    plain_stream = [i for k in range(steps) for i in plain.indices(k)]
    assert stream[:n] != plain_stream[:n] and stream[:n] != stream[n:2 * n]  # still shuffled
    again = BatchOrder(n, 4, seed=3, lengths=lengths)  # a pure function of (seed, position)
    assert [again.indices(k) for k in (90, 5, 140)] == [batches[k] for k in (90, 5, 140)]


def test_grouping_is_by_step_so_a_step_holds_the_same_windows_however_it_is_split() -> None:
    lengths = np.random.default_rng(1).choice([40, 128, 256], size=150).tolist()
    one_of_four = BatchOrder(150, 4, seed=5, lengths=lengths, step_windows=4)
    four_of_one = BatchOrder(150, 1, seed=5, lengths=lengths, step_windows=4)
    for step in range(80):  # past the first epoch's end
        whole = one_of_four.indices(step)
        assert [four_of_one.indices(4 * step + k)[0] for k in range(4)] == whole
    with pytest.raises(ValueError, match="not whole micro-batches"):
        BatchOrder(150, 4, seed=5, lengths=lengths, step_windows=6)


def test_windows_of_one_length_keep_the_plain_order() -> None:
    grouped, plain = BatchOrder(50, 4, seed=1, lengths=[256] * 50), BatchOrder(50, 4, seed=1)
    assert [grouped.indices(k) for k in range(30)] == [plain.indices(k) for k in range(30)]
    with pytest.raises(ValueError, match="3 lengths for 50 windows"):
        BatchOrder(50, 4, seed=1, lengths=[1, 2, 3])
    assert window_lengths([W(np.arange(3)), W(np.arange(7))]) == [3, 7]


def test_collate_pads_right_and_masks_context_and_padding() -> None:
    ids, labels = collate([W(np.array([5, 6, 7, 8])), W(np.array([1, 2, 3]), loss_start=1)], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8], [1, 2, 3, 0]]
    m = IGNORE_INDEX
    assert labels.tolist() == [[5, 6, 7, 8], [m, 2, 3, m]]
    # after the shift: row 0 predicts 6,7,8; row 1 predicts 2,3
    assert count_loss_tokens(labels) == 5


def test_collate_rounds_a_training_batch_to_a_few_lengths() -> None:
    """With block_size the length is a multiple of 32 (capped at block_size): a mixed run's
    batches come in 8 shapes for block_size 256, not 256 (each shape costs memory for good)."""
    lengths = {int(collate([W(np.arange(n))], pad_id=0, block_size=256)[0].shape[1])
               for n in range(2, 257)}
    assert lengths == {32, 64, 96, 128, 160, 192, 224, 256}
    assert collate([W(np.arange(70))], pad_id=0, block_size=256)[0].shape == (1, 96)
    ids, labels = collate([W(np.arange(1, 4))], pad_id=0, block_size=100)
    assert ids.shape == (1, 32) and ids[0, 3:].eq(0).all() and count_loss_tokens(labels) == 2
    assert collate([W(np.arange(70))], pad_id=0, block_size=80)[0].shape == (1, 80)


def test_lr_schedules() -> None:
    # 12 updates, numbered 0..11: two of warm-up, the peak at update 1, the floor at update 11
    f = lr_lambda("cosine", warmup_steps=2, total_steps=12, min_lr_ratio=0.1)
    assert [round(f(s), 4) for s in (0, 1, 2, 4, 11)] == [0.5, 1.0, 1.0, 0.8947, 0.1]
    assert round(f(6.5), 4) == 0.55  # halfway between the peak (update 2) and the floor (11)
    lin = lr_lambda("linear", warmup_steps=0, total_steps=11, min_lr_ratio=0.0)
    assert [lin(s) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    const = lr_lambda("constant", warmup_steps=4, total_steps=10, min_lr_ratio=0.0)
    assert [const(s) for s in (0, 3, 9)] == [0.25, 1.0, 1.0]


def test_device_and_precision_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") in (cpu, torch.device("mps"))
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
    monkeypatch.setattr("doctune.device.cpu_has_bf16", lambda: False)
    p = resolve_precision("auto", cpu)
    assert (p.name, p.autocast_dtype, p.use_scaler) == ("fp32", None, False)
    assert "no native bf16" in p.reason
    p = resolve_precision("bf16", cpu)
    assert p.autocast_dtype is torch.bfloat16 and "slower" in p.reason
    monkeypatch.setattr("doctune.device.cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", cpu).name == "bf16"
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", cpu)
    assert resolve_precision("fp32", cpu) == Precision("fp32", None, False, "fp32, as configured")


def test_mps_cache_is_given_back_near_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from doctune.device import release_if_near_budget

    held, emptied = [950 * 2**20], []
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: held[0])
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: emptied.append(True))
    assert release_if_near_budget(torch.device("mps"), budget_mb=1000) is True  # 950 > 0.9 x 1000
    held[0] = 850 * 2**20
    assert release_if_near_budget(torch.device("mps"), budget_mb=1000) is False
    assert release_if_near_budget(torch.device("cpu"), budget_mb=1) is False
    assert emptied == [True]
