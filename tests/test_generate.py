"""Generation: seeded sampling replays, greedy = argmax, streaming, options, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from doctune.cli import app
from doctune.errors import ConfigError
from doctune.generate import generate_text, interactive
from doctune.inference import Loaded, load_for_inference
from doctune.sampling import Sampling
from runfolders import shared_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Path:
    return shared_run("lora", tmp_path_factory, tiny_gpt2_dir)


@pytest.fixture(scope="module")
def loaded(run: Path) -> Loaded:
    return load_for_inference(run, device="cpu", dtype="fp32")


def test_seeded_sampling_replays(loaded: Loaded) -> None:
    s = Sampling(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=12, seed=123)
    a = generate_text(loaded, "Hello world", s)
    b = generate_text(loaded, "Hello world", s)
    c = generate_text(loaded, "Hello world", Sampling(temperature=1.0, max_new_tokens=12, seed=124))
    assert a.text == b.text and a.new_tokens == 12 and a.prompt_tokens == 2
    assert c.text != a.text


def test_greedy_is_argmax_and_streams(loaded: Loaded) -> None:
    pieces: list[str] = []
    g = generate_text(loaded, "Hello world", Sampling(temperature=0, max_new_tokens=8), on_text=pieces.append)
    ids = torch.tensor([[15496, 995]])
    with torch.no_grad():
        for _ in range(8):  # the reference: take the most likely token, eight times
            nxt = loaded.model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    assert g.text == loaded.tokenizer.decode(ids[0, 2:])
    assert "".join(pieces) == g.text and len(pieces) > 1


def test_context_limits(loaded: Loaded) -> None:
    with pytest.raises(ConfigError, match="reads at most 256 tokens"):
        generate_text(loaded, "Hi", Sampling(max_new_tokens=256))
    g = generate_text(loaded, " word" * 300, Sampling(temperature=0, max_new_tokens=6))
    assert g.dropped_prompt_tokens == 300 + 6 - 256 and g.prompt_tokens == 250


@pytest.mark.parametrize(("field", "value", "flag"), [
    ("temperature", -1.0, "--temperature"), ("top_p", 0.0, "--top-p"), ("top_k", -1, "--top-k"),
    ("repetition_penalty", 0.0, "--repetition-penalty"), ("max_new_tokens", 0, "--max-new-tokens"),
])
def test_sampling_checks(field: str, value: float, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        Sampling(**{field: value}).check()


def test_interactive_loop(loaded: Loaded) -> None:
    out: list[str] = []
    n = interactive(loaded, Sampling(max_new_tokens=4, seed=1), prompts=iter(["Hello\n", "\n", "world\n", "exit\n", "never\n"]),
                    write=out.append)
    assert n == 2
    first = generate_text(loaded, "Hello", Sampling(max_new_tokens=4, seed=1)).text
    assert "".join(out).startswith(first)


def test_cli_generate(run: Path) -> None:
    runner = CliRunner()
    args = ["generate", str(run), "Hello world", "--seed", "5", "--max-new-tokens", "6"]
    streamed, js = runner.invoke(app, args), runner.invoke(app, [*args, "--json"])
    assert streamed.exit_code == 0, streamed.output
    assert js.exit_code == 0 and json.loads(js.stdout)["new_tokens"] == 6
    # Same seed, same text: streamed to the terminal or returned whole.
    assert streamed.stdout == "Hello world" + json.loads(js.stdout)["text"] + "\n"
    inter = runner.invoke(app, ["generate", str(run), "-i", "--max-new-tokens", "3"], input="Hello\nexit\n")
    assert inter.exit_code == 0 and inter.stdout.strip()


def test_cli_generate_errors(tmp_path: Path, run: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["generate", str(run)])
    assert r.exit_code == 2 and "--interactive" in r.stderr
    r = runner.invoke(app, ["generate", str(run), "x", "--temperature", "-1"])
    assert r.exit_code == 2 and "--temperature must be 0" in r.stderr
    r = runner.invoke(app, ["generate", str(tmp_path / "nothing"), "x"])
    assert r.exit_code == 2 and "does not exist" in r.stderr
