"""Stories for emotion vectors: written by the model, cached on disk, or supplied (PROTOCOL §7).

The stimuli (``moia/data/emotions.json``, written for this project) hold the emotions, the story
topics and the two story prompts. The model writes one story per emotion × topic × sample, and one
emotionally neutral text per topic × sample, with ``moia.generate`` (batched, left-padded). Topics
are split once: the first ``N_TRAIN_TOPICS`` build vectors, the rest are held out to validate them.

Stories are cached as JSONL under ``$MOIA_CACHE_DIR/emotion_stories/``, one file per model and
setting (the file name holds a hash of the model name, its dtype, the prompts and the decoding
settings); a later call generates only what the file lacks, and the file is rewritten atomically
after each batch, so a killed run keeps every finished batch. User-supplied stories (JSONL lines
``{"emotion": ..., "text": ...}``, emotion ``"neutral"`` for neutral texts) replace generated ones.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from tqdm.auto import tqdm

from ..core.model import LanguageModel, model_name
from ..io import write_text
from ..lm.decoding import generate
from ..lm.loading import cache_dir as moia_cache_dir

NEUTRAL = "neutral"
N_TRAIN_TOPICS = 24  # of the 34 shipped topics: 24 build vectors (PROTOCOL §7 asks >= 20), 10 held out
SPLITS = ("train", "heldout", "all")


@cache
def _stimuli() -> dict[str, Any]:
    text = resources.files("moia").joinpath("data", "emotions.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def emotion_stimuli() -> dict[str, Any]:
    """The shipped stimuli (a copy): emotions, terms, story_topics, story_prompt,
    neutral_story_prompt, sentences, scenarios, question."""
    return json.loads(json.dumps(_stimuli()))


def default_emotions() -> list[str]:
    """The ten shipped emotions: calm, desperation, anger, fear, joy, sadness, guilt, pride, hope, shame."""
    return list(_stimuli()["emotions"])


def story_topics(split: str = "train") -> list[str]:
    """The shipped topics: "train" (the first 24, for vectors), "heldout" (the other 10) or "all"."""
    topics = list(_stimuli()["story_topics"])
    if split == "train":
        return topics[:N_TRAIN_TOPICS]
    if split == "heldout":
        return topics[N_TRAIN_TOPICS:]
    if split == "all":
        return topics
    raise ValueError(f"unknown topic split {split!r}: expected one of {list(SPLITS)}")


@dataclass(frozen=True)
class Story:
    """One story: its emotion (or ``NEUTRAL``), topic (None if supplied without one) and text."""

    emotion: str
    text: str
    topic: str | None = None
    sample: int = 0


@dataclass(frozen=True)
class StorySettings:
    """How stories are written. The prompts are the shipped ones (``{emotion}``, ``{topic}``)."""

    max_new_tokens: int = 128  # the prompts ask for 4-6 sentences: about 80-150 tokens
    temperature: float = 0.7  # sampled with a seed per story (SmolLM2's greedy stories loop); 0: greedy
    top_p: float | None = 0.95
    seed: int = 0
    samples: int = 1  # stories per emotion and topic (distinct only when sampling)
    system: str | None = ""  # the system turn (moia.lm.chat)
    prompt: str = dataclasses.field(default_factory=lambda: str(_stimuli()["story_prompt"]))
    neutral_prompt: str = dataclasses.field(default_factory=lambda: str(_stimuli()["neutral_story_prompt"]))

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("samples > 1 needs temperature > 0 (greedy stories would be identical)")
        for name, template, fields in (
            ("prompt", self.prompt, ("{emotion}", "{topic}")),
            ("neutral_prompt", self.neutral_prompt, ("{topic}",)),
        ):
            missing = [f for f in fields if f not in template]
            if missing:
                raise ValueError(f"{name} must contain {missing}, got {template!r}")

    def user_turn(self, emotion: str, topic: str) -> str:
        if emotion == NEUTRAL:
            return self.neutral_prompt.format(topic=topic)
        return self.prompt.format(emotion=emotion, topic=topic)


def cache_file(model: LanguageModel, settings: StorySettings, folder: Any = None) -> pathlib.Path:
    """The JSONL file that caches ``model``'s stories under ``settings``."""
    key = json.dumps(
        {"model": model_name(model), "dtype": str(model.cfg.dtype), **dataclasses.asdict(settings)},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = model_name(model).replace("/", "_")
    base = pathlib.Path(folder) if folder is not None else moia_cache_dir() / "emotion_stories"
    return base / f"{name}-{digest}.jsonl"


def _read_cache(path: pathlib.Path) -> dict[tuple[str, str, int], Story]:
    if not path.exists():
        return {}
    out = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            r = json.loads(line)
            story = Story(r["emotion"], r["text"], r["topic"], int(r["sample"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{path}:{number}: not a story record ({e}); remove the file to regenerate"
            ) from e
        out[(story.emotion, str(story.topic), story.sample)] = story
    return out


def _write_cache(path: pathlib.Path, stories: dict[tuple[str, str, int], Story]) -> None:
    lines = [json.dumps(dataclasses.asdict(s), ensure_ascii=False, sort_keys=True) for s in stories.values()]
    write_text(path, "".join(line + "\n" for line in lines))


def _story_seed(settings: StorySettings, emotion: str, topic: str, sample: int) -> int:
    """A 63-bit seed per story, so that a story does not depend on its batch."""
    digest = hashlib.sha256(f"story\x1f{settings.seed}\x1f{emotion}\x1f{topic}\x1f{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generate_stories(
    model: LanguageModel,
    emotions: Sequence[str],
    topics: Sequence[str],
    settings: StorySettings | None = None,
    neutral: bool = True,
    cache_dir: Any = None,
    batch_size: int = 32,
    progress: bool = False,
) -> list[Story]:
    """The model's stories for ``emotions`` × ``topics`` × samples (plus neutral texts per topic
    and sample if ``neutral``), from the cache where it has them; the rest are generated in
    batches of ``batch_size`` and added to the cache. Returned in that order."""
    settings = settings or StorySettings()
    if isinstance(emotions, str) or isinstance(topics, str):
        raise TypeError("emotions and topics must be lists of strings, not one string")
    if not topics:
        raise ValueError("topics must not be empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels = [*emotions, *([NEUTRAL] if neutral else [])]
    if not labels:
        raise ValueError("emotions must not be empty")
    wanted = [(e, t, n) for e in labels for t in topics for n in range(settings.samples)]
    path = cache_file(model, settings, cache_dir)
    cached = _read_cache(path)
    todo = [key for key in wanted if key not in cached]
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    for batch in tqdm(batches, desc="emotion stories", disable=not progress):
        texts = generate(
            model,
            [settings.user_turn(e, t) for e, t, _ in batch],
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=[_story_seed(settings, e, t, n) for e, t, n in batch],
            system=settings.system,
        )
        for (e, t, n), text in zip(batch, texts, strict=True):
            cached[(e, t, n)] = Story(e, text.strip(), t, n)
        _write_cache(path, cached)
    return [cached[key] for key in wanted]


def load_stories(path: str | os.PathLike) -> list[Story]:
    """User-supplied stories: JSONL lines with "emotion" and "text" (optional "topic", "sample")."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stories file not found: {path}")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            emotion, text = r["emotion"], r["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path}:{number}: expected a JSON object with 'emotion' and 'text' ({e})"
            ) from e
        if not isinstance(emotion, str) or not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}:{number}: 'emotion' must be a string and 'text' a non-empty string")
        out.append(Story(emotion, text, r.get("topic"), int(r.get("sample", 0))))
    if not out:
        raise ValueError(f"stories file {path} holds no stories")
    return out
