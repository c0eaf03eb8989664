"""The config schema: precedence of sources, unknown keys, value checks, doctune.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from doctune.config import Config, commented_yaml, load_config, parse_override, valid_keys
from doctune.errors import ConfigError

CONTRACT_KEYS = ["data.path", "data.block_size", "data.overlap", "data.val_fraction", "model.name", "model.tokenizer", "lora.enabled", "lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "train.output_dir", "train.max_steps", "train.epochs", "train.micro_batch_size", "train.grad_accum", "train.lr", "train.warmup_steps", "train.schedule", "train.weight_decay", "train.max_grad_norm", "train.precision", "train.grad_checkpointing", "train.device", "train.seed", "train.eval_every", "train.save_every", "train.keep_checkpoints"]


def test_contract_keys_exist() -> None:
    assert set(CONTRACT_KEYS) <= set(valid_keys())


def test_cli_beats_yaml_beats_defaults(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 1.0e-3\n  seed: 7\nlora:\n  r: 4\n")
    cfg = load_config(f, ["train.lr=3e-4", "lora.r=16"], {"train.max_steps": 5})
    assert cfg.train.lr == 3e-4  # CLI over YAML
    assert cfg.lora.r == 16
    assert cfg.train.seed == 7  # YAML over default
    assert cfg.train.grad_accum == Config().train.grad_accum  # default
    assert cfg.train.max_steps == 5
    # a dedicated CLI option (extra) beats --set
    assert load_config(None, ["train.max_steps=3"], {"train.max_steps": 9}).train.max_steps == 9


def test_unknown_key_names_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key `train\.lerning_rate`"):
        load_config(None, ["train.lerning_rate=1"])
    with pytest.raises(ConfigError, match=r"unknown key `lora\.rank`"):
        load_config(None, ["lora.rank=8"])
    f = tmp_path / "c.yaml"
    f.write_text("trian:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key `trian`. Did you mean `train"):
        load_config(f)


def test_suggests_full_key_from_last_part() -> None:
    with pytest.raises(ConfigError, match=r"Did you mean `train\.grad_accum`"):
        load_config(None, ["data.grad_accum=2"])


def test_bad_values_collected_into_one_error() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lr=-1", "train.precision=fp8", "data.block_size=abc"])
    msg = str(e.value)
    assert "`train.lr`" in msg and "`train.precision`" in msg and "`data.block_size`" in msg
    assert "got -1" in msg and "'fp8'" in msg


def test_overlap_must_be_below_block_size() -> None:
    with pytest.raises(ConfigError, match=r"`data.overlap` must be smaller than `data.block_size`, "
                                          r"got overlap=512, block_size=256\."):
        load_config(None, ["data.block_size=256", "data.overlap=512"])


def test_override_parsing() -> None:
    assert parse_override("train.lr=3e-4") == ("train.lr", 3e-4)
    assert parse_override("lora.target_modules=[c_attn, c_proj]") == ("lora.target_modules", ["c_attn", "c_proj"])
    assert parse_override("train.max_steps=null") == ("train.max_steps", None)
    assert parse_override("model.name=gpt2") == ("model.name", "gpt2")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")


def test_missing_and_bad_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_commented_yaml_round_trips() -> None:
    text = commented_yaml()
    assert "# Peak learning rate; null = 1e-3 for LoRA" in text
    data = yaml.safe_load(text)
    assert Config.model_validate(data) == Config()


def test_commented_out_section_is_empty(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  # lr: 1e-3\nlora:\n  r: 4\n")
    cfg = load_config(f, ["train.seed=3"])
    assert cfg.train.seed == 3 and cfg.lora.r == 4


def test_compile_on_off_as_yaml_writes_them(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  compile: off\n")  # YAML 1.1 reads a bare off as false
    assert load_config(f).train.compile == "off"
    assert load_config(None, ["train.compile=on"]).train.compile == "on"
    assert Config().train.compile == "auto"
    with pytest.raises(ConfigError, match=r"train\.compile"):
        load_config(None, ["train.compile=sometimes"])
