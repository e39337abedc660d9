"""The architecture, checked: layers import only downwards, one module owns the KV cache, every
``PROTOCOL §n`` citation resolves, and the benchmarks are collected."""

import ast
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "moia"

# What each part of moia may import from moia, lowest layer first (README, "Layout").
ALLOWED = {
    "io": set(),
    "kernels": set(),
    "core": {"io", "kernels"},
    "lm": {"io", "kernels", "core"},
    "eval": {"io"},
    "directions": {"io", "kernels", "core", "lm"},
    "trials": {"io", "kernels", "core", "lm", "eval", "directions"},
    "analysis": {"io", "kernels", "core", "lm", "directions", "eval"},
    "experiment": {"io", "kernels", "core", "lm", "eval", "directions", "trials", "analysis"},
    "training": {"io", "kernels", "core", "lm", "eval", "directions", "trials"},
    "cli": {
        "io",
        "kernels",
        "core",
        "lm",
        "eval",
        "directions",
        "trials",
        "experiment",
        "training",
        "analysis",
    },
}


def _part(module: str) -> str:
    """``moia.core.compile`` -> ``core``; ``moia.io`` -> ``io``."""
    return module.split(".")[1]


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    for path in (ROOT / "kernels").glob("*.py"):  # installed as moia.kernels
        name = "moia.kernels" if path.stem == "__init__" else f"moia.kernels.{path.stem}"
        out[name] = path
    return out


def _imports(module: str, path: pathlib.Path) -> list[tuple[str, list[str]]]:
    """(imported moia module, imported names) for every import in the file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("moia")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("moia"):
                found.append((target, [a.name for a in node.names]))
    return found


def test_layers_import_only_downwards():
    bad = []
    for module, path in _modules().items():
        if module == "moia" or module == "moia.__main__":
            continue
        part = _part(module)
        for target, _ in _imports(module, path):
            other = _part(target) if target != "moia" else "moia"
            if other != part and other not in ALLOWED[part]:
                bad.append(f"{module} imports {target}")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_experiment_and_training_are_independent():
    modules = _modules()
    for a, b in (("experiment", "training"), ("training", "experiment")):
        for module, path in modules.items():
            if module.startswith(f"moia.{a}"):
                assert not any(t.startswith(f"moia.{b}") for t, _ in _imports(module, path)), module


def test_no_private_names_cross_modules():
    bad = []
    for module, path in _modules().items():
        for target, names in _imports(module, path):
            if target != module:
                bad += [f"{module} imports {target}.{n}" for n in names if n.startswith("_")]
    assert not bad, bad


def test_at_most_twelve_top_level_modules():
    top = [p for p in PACKAGE.iterdir() if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())]
    assert len(top) <= 12, sorted(p.name for p in top)


def test_only_the_decoding_engine_and_the_loader_touch_kv_cache_keywords():
    pattern = re.compile(r"past_key_values|past_kv_cache|DynamicCache|KeyValueCache|\bcache_kw\b")
    touching = sorted(
        str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())
    )
    assert touching == ["moia/lm/decoding.py", "moia/lm/loading.py"]


def test_every_protocol_citation_resolves():
    sections = set(re.findall(r"^## (\d+)\.", (ROOT / "docs" / "protocol.md").read_text(), re.M))
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "kernels").glob("*.py"), *(ROOT / "tests").rglob("*.py")]
    files += [*(ROOT / "benchmarks").glob("*.py"), ROOT / "README.md"]
    cited = {}
    for path in files:
        for n in re.findall(r"PROTOCOL ?§ ?(\d+)", path.read_text()):
            cited.setdefault(n, str(path.relative_to(ROOT)))
    missing = {n: where for n, where in cited.items() if n not in sections}
    assert cited and not missing, f"cited sections missing from docs/protocol.md: {missing}"


def test_the_readme_layout_table_matches_the_folders():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout") :]
    for part in ALLOWED:
        where = "kernels/" if part == "kernels" else f"moia/{part}" + ("/" if part != "io" else ".py")
        assert f"`{where}" in table, f"README layout table lacks {where}"


def test_benchmarks_are_collected():
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    collected = re.search(r"(\d+) tests? collected", out.stdout)
    assert out.returncode == 0 and collected and int(collected.group(1)) >= 1, out.stdout[-2000:]
