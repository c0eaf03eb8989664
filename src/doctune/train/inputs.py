"""Phase 4 of a run: what the model reads. The tokenizer, the docs' train and validation
windows (prepared once into the token store, reused when nothing changed), the knowledge
mix (:mod:`doctune.train.knowledge`) and the prompts of the samples.

Under several processes rank 0 makes the synth data, the tokenizer and the store while the
others wait, then read what it made.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doctune.config import Config, is_scratch
from doctune.data.settings import DataSettings
from doctune.errors import DataError
from doctune.rundir import RunDir
from doctune.train import dist
from doctune.train.dist import DistEnv
from doctune.train.knowledge import KnowledgeSetup, load_knowledge, mix_training_set
from doctune.train.parts import Inputs

if TYPE_CHECKING:
    from doctune.data.store import WindowSet
    from doctune.knowledge.mix import MixedWindows


def silent(text: str) -> None:
    """A ``say`` that says nothing (other ranks, ``--quiet``)."""


def load_inputs(cfg: Config, env: DistEnv, folder: RunDir, *, resume: bool,
                say: Callable[[str], None] = silent) -> Inputs:
    """The tokenizer and windows of the run in ``folder``, knowledge mixed in. ``say``
    tells the user what takes a while before training starts (the monitor is not open yet)."""
    from doctune.modeling import pad_token_id

    if cfg.knowledge.enabled and cfg.knowledge.auto and not (resume and folder.knowledge_dir.is_dir()):
        k = cfg.knowledge
        say("making the study data from the docs: facts, questions, restatements ..."
            + (f" (asking the teacher {k.teacher_model}: minutes per page on a local server; "
               "its answers are cached in the run's knowledge/cache/)" if k.teacher_url else ""))
    knowledge = dist.main_first(env, lambda: load_knowledge(cfg, folder, say=say))
    if not env.is_main:  # the synth data rank 0 made (or found)
        knowledge = load_knowledge(cfg, folder, make=False)
    # control documents are kept out of the store
    settings = DataSettings.from_config(cfg.data, exclude=knowledge.exclude if knowledge else ())
    tokenizer = dist.main_first(env, lambda: _prepare(cfg, folder, settings, resume=resume))
    if tokenizer is None:  # the other ranks read the tokenizer rank 0 made or chose
        tokenizer = _tokenizer(cfg, folder)
    docs, val, fingerprint = _open_store(cfg, folder)
    replay, study = (_from_base(cfg, env, folder, tokenizer, knowledge, say) if knowledge
                     else (None, None))
    train: WindowSet | MixedWindows = docs
    if knowledge:
        train = mix_training_set(cfg, knowledge, tokenizer, docs, replay=replay, study=study,
                                 sharded=env.parallel == "fsdp")
        fingerprint = f"{fingerprint}+mix:{train.fingerprint()}"  # a resume checks the mix too
    t = cfg.train
    prompts = (t.sample_prompts if t.sample_prompts is not None
               else _default_prompts(val or train, tokenizer))
    return Inputs(tokenizer=tokenizer, train=train, val=val, pad_id=pad_token_id(tokenizer),
                  fingerprint=fingerprint, knowledge=knowledge, prompts=prompts)


Answers = list[dict[str, Any]]


def _from_base(cfg: Config, env: DistEnv, folder: RunDir, tokenizer: Any,
               knowledge: KnowledgeSetup, say: Callable[[str], None] = silent
               ) -> tuple[Callable[[int], Answers] | None, Answers | None]:
    """What the base model says before training, made by rank 0 and read back on resume and
    by the other ranks: its open-book answers to the trained questions
    (:mod:`doctune.knowledge.selfstudy`), and a function that gives its answers to the general
    prompts for the number of windows the mix replays (:mod:`doctune.knowledge.replay`);
    None for what is not asked for. Neither is made for a tokenizer without a chat template,
    nor for a quantised base (it would be loaded whole to answer): the replay is then the
    shipped text, and self-study is left out (said in the header)."""
    from doctune.knowledge.replay import make_answers, prompts_for, read_answers, split_windows

    k = cfg.knowledge
    able = cfg.lora.quantize == "none" and bool(getattr(tokenizer, "chat_template", None))
    replay = bool(k.replay_share) and k.replay_source == "self" and able
    study = k.self_study and knowledge.synth is not None and able
    if k.self_study and not study:
        knowledge.summary["self_study"] = ("left out: a quantised base or a tokenizer without a "
                                           "chat template")
    if not (replay or study):
        return None, None
    r_file, s_file = folder.replay_file, folder.selfstudy_file

    def make_study() -> None:
        if not s_file.is_file():
            say("the base model answers the trained questions with their sections "
                "(self-study) ...")
            make_answers(cfg.model.name, tokenizer, device=cfg.train.device,
                         system=k.system_prompt, study=(knowledge.synth, s_file))

    def replayed(windows: int) -> Answers:
        def make() -> None:
            if not r_file.is_file():
                say("the base model answers general prompts (replayed against forgetting) ...")
                sampled = k.replay_temperature > 0
                chat, plain = split_windows(windows, k.replay_plain_share)
                make_answers(cfg.model.name, tokenizer, device=cfg.train.device,
                             system=k.system_prompt, replay=r_file,
                             prompts=prompts_for(chat, sampled=sampled),
                             openings=prompts_for(plain, sampled=sampled, plain=True),
                             temperature=k.replay_temperature, seed=cfg.train.seed)

        dist.main_first(env, make)  # every rank takes part, made or not
        return read_answers(r_file)

    if study:
        dist.main_first(env, make_study)  # every rank takes part, made or not
    return (replayed if replay else None), (read_answers(s_file) if study else None)


def _prepare(cfg: Config, folder: RunDir, settings: DataSettings, *, resume: bool) -> Any:
    """Prepare the token store (cached) and return the tokenizer. A from-scratch preset
    trains its tokenizer on the cleaned docs on the way (kept in the run folder, and read
    back on resume)."""
    from doctune.data.prepare import prepare
    from doctune.data.tokenize import load_tokenizer
    from doctune.modeling import preset, train_tokenizer

    d, m = cfg.data, cfg.model
    assert d.path is not None
    made: list[Any] = []

    def make_tokenizer(texts: list[str]) -> Any:
        made.append(train_tokenizer(texts, preset(m.name).vocab_size))
        made[0].save_pretrained(folder.tokenizer_dir)
        return made[0]

    tokenizer = None
    if not is_scratch(m.name) or m.tokenizer:
        tokenizer = load_tokenizer(m.tokenizer or m.name)
    elif resume and folder.tokenizer_dir.is_dir():
        tokenizer = load_tokenizer(str(folder.tokenizer_dir))
    summary = prepare(Path(d.path), folder.token_store(d.cache_dir), settings, tokenizer=tokenizer,
                      make_tokenizer=make_tokenizer if tokenizer is None else None)
    folder.write_data_summary(summary.to_dict())
    return tokenizer or made[0]


def _tokenizer(cfg: Config, folder: RunDir) -> Any:
    """The tokenizer rank 0 used: the model's own, or a scratch preset's from the run folder."""
    from doctune.data.tokenize import load_tokenizer

    m = cfg.model
    own = not is_scratch(m.name) or m.tokenizer
    return load_tokenizer((m.tokenizer or m.name) if own else str(folder.tokenizer_dir))


def _open_store(cfg: Config, folder: RunDir) -> tuple[WindowSet, WindowSet | None, str]:
    """Train and validation windows of the prepared store and the store's fingerprint."""
    from doctune.data.store import TokenStore

    store = TokenStore.open(folder.token_store(cfg.data.cache_dir))
    train, val = store.split("train"), store.split("val")
    if len(train) == 0:
        raise DataError(f"The docs under {cfg.data.path} gave no training windows. Add documents, "
                        "or lower `data.val_fraction` so that some go to training.")
    return train, (val if len(val) else None), str(store.manifest.get("fingerprint", ""))


def _default_prompts(windows: WindowSet | MixedWindows, tokenizer: Any, n: int = 3) -> list[str]:
    """The first words of a few documents (first windows of distinct documents)."""
    from doctune.monitor.samples import default_prompts

    texts, seen = [], set()
    for i in range(len(windows)):
        w = windows[i]
        if w.loss_start == 0 and w.doc not in seen:
            seen.add(w.doc)
            texts.append(tokenizer.decode(w.ids[:48].tolist(), skip_special_tokens=True))
        if len(texts) >= n:
            break
    return default_prompts(texts, n=n)
