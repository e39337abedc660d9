"""Prompt sets: the shipped harmful/harmless instructions, the seeded split, and every file format."""

import json
import sys
import types

import pytest

from moia.directions.prompts import load_prompts, split_prompts


# ------------------------------------------------------------------------------ shipped sets
@pytest.mark.parametrize("name", ["harmful", "harmless"])
def test_shipped_sets_are_large_distinct_one_liners(name):
    prompts = load_prompts(name)
    assert len(prompts) >= 64
    assert len(set(prompts)) == len(prompts)
    assert all("\n" not in p and 10 < len(p) < 120 for p in prompts)


def test_shipped_sets_do_not_overlap():
    assert not set(load_prompts("harmful")) & set(load_prompts("harmless"))


def test_split_is_seeded_disjoint_and_complete():
    prompts = load_prompts("harmful")
    train, val = split_prompts(prompts, 0.25, seed=0)
    assert (train, val) == split_prompts(prompts, 0.25, seed=0)
    assert split_prompts(prompts, 0.25, seed=1) != (train, val)
    assert len(val) == round(0.25 * len(prompts))
    assert sorted(train + val) == sorted(prompts)
    assert load_prompts("harmful", split="train") == train
    assert load_prompts("harmful", split="val") == val
    assert train == [p for p in prompts if p in train]  # original order kept


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(val_fraction=0.0), "val_fraction must lie in"),
        (dict(val_fraction=1.0), "val_fraction must lie in"),
    ],
)
def test_split_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_prompts(["a", "b", "c"], **kwargs)


def test_split_needs_prompts_on_both_sides():
    with pytest.raises(ValueError, match="both train and val would need at least one prompt"):
        split_prompts(["only one"], 0.5)


def test_unknown_split_name():
    with pytest.raises(ValueError, match="split must be None, 'train' or 'val'"):
        load_prompts("harmful", split="test")


# ------------------------------------------------------------------------------- file formats
def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "data",
    [
        ["Bake bread.", "Write a poem."],
        [{"instruction": "Bake bread.", "category": "x"}, {"instruction": "Write a poem.", "category": "y"}],
        [{"prompt": "Bake bread."}, {"prompt": "Write a poem."}],
        {"instructions": ["Bake bread.", "Write a poem."]},
        [{"id": "7", "text": "Bake bread."}, {"text": "Write a poem."}],  # a known text field
    ],
)
def test_json_forms(tmp_path, data):
    path = write(tmp_path, "p.json", json.dumps(data))
    assert load_prompts(path) == ["Bake bread.", "Write a poem."]
    assert load_prompts(str(path)) == ["Bake bread.", "Write a poem."]


def test_jsonl_strings_and_records(tmp_path):
    path = write(tmp_path, "p.jsonl", '"Bake bread."\n\n{"instruction": "Write a poem."}\n')
    assert load_prompts(path) == ["Bake bread.", "Write a poem."]


@pytest.mark.parametrize(
    ("header", "column"),
    [
        ("instruction,category", None),
        ("category,prompt", None),
        ("request,category", None),
        ("x,goal", "goal"),
    ],
)
def test_csv_columns(tmp_path, header, column):
    first, second = header.split(",")
    text_first = first in ("instruction", "request") or column == first
    rows = [("Bake bread.", "a"), ("Write a poem, please.", "b")]
    lines = [header] + [f'"{t}",{c}' if text_first else f'{c},"{t}"' for t, c in rows]
    path = write(tmp_path, "p.csv", "\n".join(lines) + "\n")
    assert load_prompts(path, column=column) == ["Bake bread.", "Write a poem, please."]


@pytest.mark.parametrize("name", ["p.json", "p.jsonl", "p.csv"])
def test_records_without_a_text_field_are_an_error(tmp_path, name):
    """A record such as {"id": "7", "behavior": ...} must not turn its first field into a prompt."""
    rows = [{"id": "7", "behavior": "Bake bread."}]
    text = {
        "p.json": json.dumps(rows),
        "p.jsonl": json.dumps(rows[0]),
        "p.csv": "id,behavior\n7,Bake bread.\n",
    }
    path = write(tmp_path, name, text[name])
    with pytest.raises(ValueError, match=r"no text field among \['id', 'behavior'\]; expected one of"):
        load_prompts(path)
    assert load_prompts(path, column="behavior") == ["Bake bread."]


def test_explicit_column_in_json_records(tmp_path):
    path = write(tmp_path, "p.json", json.dumps([{"instruction": "no", "goal": "Bake bread."}]))
    assert load_prompts(path, column="goal") == ["Bake bread."]


# ------------------------------------------------------------------------------------ errors
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompt file not found: .*nope.json"):
        load_prompts(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("name", "text"), [("e.json", "[]"), ("e.jsonl", "\n"), ("e.csv", ""), ("h.csv", "instruction\n")]
)
def test_empty_files(tmp_path, name, text):
    path = write(tmp_path, name, text)
    with pytest.raises(ValueError, match="no prompts in .*" + name.replace(".", r"\.")):
        load_prompts(path)


def test_unknown_column(tmp_path):
    path = write(tmp_path, "p.csv", "instruction,category\nBake bread.,a\n")
    with pytest.raises(
        ValueError, match=r"no column 'goal'; available columns: \['instruction', 'category'\]"
    ):
        load_prompts(path, column="goal")
    path = write(tmp_path, "p.json", json.dumps([{"instruction": "Bake bread."}]))
    with pytest.raises(ValueError, match=r"entry 0\): no column 'goal'"):
        load_prompts(path, column="goal")


def test_invalid_json(tmp_path):
    path = write(tmp_path, "p.json", "[not json")
    with pytest.raises(ValueError, match=r"p\.json: not valid JSON"):
        load_prompts(path)


def test_json_object_without_instructions(tmp_path):
    path = write(tmp_path, "p.json", json.dumps({"prompts": ["a"]}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_prompts(path)


def test_unknown_suffix(tmp_path):
    path = write(tmp_path, "p.txt", "Bake bread.\n")
    with pytest.raises(ValueError, match=r"unknown prompt file type '\.txt'"):
        load_prompts(path)


@pytest.mark.parametrize(
    ("data", "message"), [([1, "a"], "entry 0 is int"), (["a", "  "], "entry 1 is an empty string")]
)
def test_bad_entries(tmp_path, data, message):
    path = write(tmp_path, "p.json", json.dumps(data))
    with pytest.raises(ValueError, match=message):
        load_prompts(path)


# ------------------------------------------------------------------------- Hugging Face hub
def test_hf_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(ImportError, match="needs the `datasets` package"):
        load_prompts("hf:owner/advbench")
    with pytest.raises(
        FileNotFoundError, match=r"prompt file not found: owner/advbench \(for a Hugging Face"
    ):
        load_prompts("owner/advbench")  # a mistyped path is not sent to the hub


class FakeDataset:
    column_names = ["goal", "target"]

    def __getitem__(self, column):
        return {"goal": ["Bake bread.", "Write a poem."], "target": ["x", "y"]}[column]


def test_hf_with_fake_datasets(monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        if name == "owner/missing":
            raise FileNotFoundError("no such dataset")
        return FakeDataset()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_prompts("hf:owner/set", hf_split="test") == ["Bake bread.", "Write a poem."]
    assert calls == [("owner/set", "test")]
    assert load_prompts("hf:owner/set", column="target") == ["x", "y"]
    with pytest.raises(ValueError, match="could not load the Hugging Face dataset 'owner/missing'"):
        load_prompts("hf:owner/missing")
