"""Instruction sets for refusal directions: the shipped harmful/harmless sets and user files.

[ARDITI] §2.1 computes the refusal direction from a set of harmful and a set of harmless
instructions, split into train (difference of means) and validation (direction selection). moia
ships its own sets, written for the project (``moia/data/harmful.json``, ``harmless.json``: short
one-line requests, no operational detail), and reads the same kind of list from:

- a shipped name: ``"harmful"``, ``"harmless"``;
- JSON: a list of strings, a list of records, or ``{"instructions": [...]}``;
- JSONL: one string or one record per line;
- CSV: a header row, then one record per row;
- a Hugging Face dataset, ``"hf:owner/name"`` (the prefix is required: a mistyped file name is
  an error here, not a hub request), when the ``datasets`` package is installed and the hub (or
  its local cache) is reachable.

Records take their text from ``column`` if given, else from the first known text field they have
(``TEXT_COLUMNS``: instruction, prompt, goal — AdvBench's —, request, text, question); a record
with none of them is an error listing its fields, never a silent pick of its first field.
"""

import csv
import json
import pathlib
import random
from importlib import resources
from typing import Any

SHIPPED = ("harmful", "harmless")
TEXT_COLUMNS = ("instruction", "prompt", "goal", "request", "text", "question")
SPLITS = ("train", "val")


def load_prompts(
    source: str | pathlib.Path,
    split: str | None = None,
    column: str | None = None,
    val_fraction: float = 0.25,
    seed: int = 0,
    hf_split: str = "train",
) -> list[str]:
    """Load a list of instructions.

    Args:
        source: a shipped name ("harmful", "harmless"), a .json/.jsonl/.csv path, or a Hugging
            Face dataset ("hf:owner/name").
        split: None for every prompt, or "train"/"val" for the seeded split of ``split_prompts``.
        column: the record field holding the text (default: "instruction", "prompt", first field).
        val_fraction, seed: the split (see ``split_prompts``).
        hf_split: the dataset split to read from a Hugging Face dataset.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be None, 'train' or 'val', got {split!r}")
    prompts = _read(source, column, hf_split)
    if not prompts:
        raise ValueError(f"no prompts in {source}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"{source}: entry {i} is {type(p).__name__}, expected a string")
        if not p.strip():
            raise ValueError(f"{source}: entry {i} is an empty string")
    if split is None:
        return prompts
    train, val = split_prompts(prompts, val_fraction, seed)
    return train if split == "train" else val


def split_prompts(
    prompts: list[str], val_fraction: float = 0.25, seed: int = 0
) -> tuple[list[str], list[str]]:
    """A seeded random ``(train, val)`` split; ``val`` gets ``round(val_fraction * n)`` prompts.

    The same prompts, fraction and seed give the same split on every platform (``random.Random``).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    n_val = round(val_fraction * len(prompts))
    if not 0 < n_val < len(prompts):
        raise ValueError(
            f"cannot split {len(prompts)} prompts with val_fraction={val_fraction}: "
            "both train and val would need at least one prompt"
        )
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [prompts[i] for i in train], [prompts[i] for i in val]


def arditi_sample(
    prompts: list[str],
    val: list[str] | None = None,
    n_train: int = 128,
    n_val: int = 32,
    seed: int = 42,
    rng: random.Random | None = None,
) -> tuple[list[str], list[str]]:
    """[ARDITI]'s ``(train, val)`` sample (``pipeline/run_pipeline.py``, ``load_and_sample_datasets``):
    ``random.sample`` of ``n_train`` train and ``n_val`` val prompts after ``random.seed(42)``.

    [ARDITI] samples from separate train and val splits; given ``val``, so does this. Given one pool
    (moia's shipped sets), val is sampled first and train from the rest, so the two never share a
    prompt. A set smaller than asked for is used whole. ``rng`` continues a shared generator, so the
    harmful and the harmless set are drawn one after the other from one seed, as in [ARDITI].
    """
    for name, n in (("n_train", n_train), ("n_val", n_val)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    rng = rng or random.Random(seed)
    if val is None:
        val = rng.sample(prompts, min(n_val, len(prompts) - 1))
        taken = set(val)
        rest = [p for p in prompts if p not in taken]
        return rng.sample(rest, min(n_train, len(rest))), val
    train = rng.sample(prompts, min(n_train, len(prompts)))
    return train, rng.sample(val, min(n_val, len(val)))


# ---------------------------------------------------------------------------------- readers
def _read(source: str | pathlib.Path, column: str | None, hf_split: str) -> list[Any]:
    name = str(source)
    if name in SHIPPED and not pathlib.Path(name).exists():
        text = resources.files("moia").joinpath("data", f"{name}.json").read_text(encoding="utf-8")
        return _records(json.loads(text)["instructions"], column, name)
    if name.startswith("hf:"):
        return _read_hf(name[3:], column, hf_split)
    path = pathlib.Path(source)
    suffix = path.suffix.lower()
    if not path.exists():
        hint = f" (for a Hugging Face dataset write 'hf:{name}')" if name.count("/") == 1 else ""
        raise FileNotFoundError(f"prompt file not found: {path}{hint}")
    if suffix == ".json":
        data = _parse(path, lambda text: json.loads(text))
        if isinstance(data, dict) and "instructions" in data:
            data = data["instructions"]
        if not isinstance(data, list):
            raise ValueError(
                f"{path}: expected a JSON list (or {{'instructions': [...]}}), got {type(data).__name__}"
            )
        return _records(data, column, path)
    if suffix == ".jsonl":
        rows = _parse(path, lambda text: [json.loads(line) for line in text.splitlines() if line.strip()])
        return _records(rows, column, path)
    if suffix == ".csv":
        return _read_csv(path, column)
    raise ValueError(f"{path}: unknown prompt file type {suffix!r}; expected .json, .jsonl or .csv")


def _parse(path: pathlib.Path, parse: Any) -> Any:
    try:
        return parse(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _pick_column(fields: list[str], column: str | None, where: Any) -> str:
    if column is not None:
        if column not in fields:
            raise ValueError(f"{where}: no column {column!r}; available columns: {fields}")
        return column
    for name in TEXT_COLUMNS:
        if name in fields:
            return name
    raise ValueError(
        f"{where}: no text field among {fields}; expected one of {list(TEXT_COLUMNS)}, or name it with "
        "column=... (--column)"
    )


def _records(rows: list[Any], column: str | None, where: Any) -> list[Any]:
    """Strings pass through; dicts give the text of their chosen column."""
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            out.append(row[_pick_column(list(row), column, f"{where} (entry {i})")])
        else:
            out.append(row)
    return out


def _read_csv(path: pathlib.Path, column: str | None) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        if not fields:
            raise ValueError(f"no prompts in {path}")
        name = _pick_column(fields, column, path)
        return [row[name] for row in reader]


def _read_hf(name: str, column: str | None, hf_split: str) -> list[str]:
    try:
        import datasets  # optional: imported only for hub datasets
    except ImportError as e:
        raise ImportError(
            f"loading the Hugging Face dataset {name!r} needs the `datasets` package "
            "(pip install datasets); or pass a .json/.jsonl/.csv file"
        ) from e
    try:
        ds = datasets.load_dataset(name, split=hf_split)
    except Exception as e:  # offline, unknown name, unknown split: all surface here
        raise ValueError(f"could not load the Hugging Face dataset {name!r} (split {hf_split!r}): {e}") from e
    return list(ds[_pick_column(list(ds.column_names), column, name)])
