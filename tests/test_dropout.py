"""FastDropout is nn.Dropout with a faster CPU mask: same function, same gradient, same seed
behaviour; a LoRA model trained on the CPU gets it in place of PEFT's dropouts."""

from __future__ import annotations

import pytest
import torch

from doctune.train.attention import drop_mask
from doctune.train.dropout import FastDropout, use_fast_dropout


def test_output_and_gradient_are_dropout_with_the_mask_drawn() -> None:
    x = torch.randn(6, 7, 33, requires_grad=True)
    layer = FastDropout(0.25).train()
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)
    drop = drop_mask((6, 7, 33), 0.25, torch.device("cpu"))
    expected = torch.where(drop, torch.zeros(()), x.detach() * (1 / 0.75))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(x.grad, torch.where(drop, torch.zeros(()), grad * (1 / 0.75)), rtol=0, atol=0)
    assert 0.2 < float(drop.float().mean()) < 0.3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_evaluation_small_p_and_other_dtypes(dtype: torch.dtype) -> None:
    x = torch.randn(4, 50, dtype=dtype)
    assert torch.equal(FastDropout(0.3).eval()(x), x)  # evaluation: the identity
    out = FastDropout(0.3).train()(x)
    assert out.dtype == dtype and out.shape == x.shape
    kept = out != 0
    torch.testing.assert_close(out[kept], (x / 0.7).to(dtype)[kept])
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))
    torch.manual_seed(1)  # below 1%: PyTorch's own draw (drop_mask's 2**-15 rounding is too coarse)
    a = FastDropout(0.005).train()(x.float())
    torch.manual_seed(1)
    torch.testing.assert_close(a, torch.nn.functional.dropout(x.float(), 0.005, training=True))


def test_lora_dropouts_are_replaced_and_training_follows_the_seed(tiny_gpt2_dir) -> None:
    from doctune.modeling import apply_lora, load_pretrained

    model = apply_lora(load_pretrained(str(tiny_gpt2_dir)), r=4, alpha=8, dropout=0.05)
    plain = [m for m in model.modules() if type(m) is torch.nn.Dropout and m.p >= 0.01]
    assert sum(m.p == 0.05 for m in plain) == 8  # PEFT's lora_dropout: 4 adapted layers x 2 blocks
    assert use_fast_dropout(model) == len(plain)
    assert not any(type(m) is torch.nn.Dropout and m.p >= 0.01 for m in model.modules())
    assert sorted(m.p for m in model.modules() if isinstance(m, FastDropout)) == sorted(m.p for m in plain)
    model.train()
    ids = torch.randint(0, 100, (2, 16))

    def loss(seed: int) -> float:
        torch.manual_seed(seed)
        with torch.no_grad():
            return float(model(input_ids=ids, labels=ids).loss)

    assert loss(3) == loss(3) and loss(3) != loss(4)
