"""Shared fixtures: the real default models (loaded once per session) and a tiny random model."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Without a GPU the Triton kernel can only run in Triton's interpreter, which triton reads when it is
# first imported -- and transformer_lens imports triton, so any test module that imports
# transformer_lens at collection would otherwise fix triton in compiled mode before the kernel tests
# (tests/kernels/test_kernel.py) are collected. Only MOIA_FORCE_TRITON=1 sends CPU tensors to it.
if not os.path.exists("/proc/driver/nvidia"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Every annotated function of moia has its types and jaxtyping shapes checked at run time in the
# test suite (beartype). The hook must be installed before moia is first imported.
from jaxtyping import install_import_hook  # noqa: E402

TYPECHECKED = ["moia.core", "moia.lm", "moia.directions", "moia.eval", "moia.trials", "moia.experiment"]
TYPECHECKED += [
    "moia.training",
    "moia.cli",
    "moia.io",
    "moia.kernels.reference",
    "moia.analysis",
]  # not the Triton kernel
import tests.typecheck  # noqa: E402,F401  (the checker the hook names)

install_import_hook(TYPECHECKED, "tests.typecheck.typechecker")

import pytest  # noqa: E402
import torch  # noqa: E402


def _has_hooked() -> bool:
    """transformer-lens < 4 (HookedTransformer), judged from its version without importing it:
    importing transformer_lens imports triton, which must first see TRITON_INTERPRET (test_kernel)."""
    from importlib.metadata import version

    return int(version("transformer-lens").split(".")[0]) < 4


HAS_HOOKED = _has_hooked()


@pytest.fixture(autouse=True)
def _no_grad_leaks():
    torch.manual_seed(0)
    yield


def _load(name: str, backend: str):
    from moia import load_model

    if backend == "hooked" and not HAS_HOOKED:
        pytest.skip("transformer-lens >= 4 has no HookedTransformer")
    return load_model(name, backend=backend)


@pytest.fixture(scope="session")
def smollm2():
    return _load("smollm2-135m-instruct", "hooked")


@pytest.fixture(scope="session")
def smollm2_bridge():
    return _load("smollm2-135m-instruct", "bridge")


@pytest.fixture(scope="session")
def gemma():
    return _load("gemma-3-270m", "hooked")


@pytest.fixture(scope="session")
def gemma_bridge():
    return _load("gemma-3-270m", "bridge")


@pytest.fixture(params=["hooked", "bridge"])
def smollm2_any(request):
    return request.getfixturevalue("smollm2" if request.param == "hooked" else "smollm2_bridge")


@pytest.fixture(scope="session")
def smollm2_hf():
    return _load("smollm2-135m-instruct", "hf")


@pytest.fixture(scope="session")
def gemma_hf():
    return _load("gemma-3-270m", "hf")


@pytest.fixture(scope="session")
def tiny_hf_dirs(tmp_path_factory):
    """{"llama": dir, "gemma": dir}: tiny random HF models that every backend loads (tests/tiny_hf.py)."""
    from tests.tiny_hf import save_tiny

    root = tmp_path_factory.mktemp("tiny_hf")
    return {kind: str(save_tiny(kind, root / kind)) for kind in ("llama", "gemma")}


@pytest.fixture(scope="session")
def tiny():
    """A 2-layer random HookedTransformer (d_model 64) for fast unit tests without a tokenizer."""
    if not HAS_HOOKED:
        pytest.skip("transformer-lens >= 4 has no HookedTransformer")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=64,
        n_heads=4,
        d_head=16,
        d_mlp=128,
        d_vocab=101,
        n_ctx=64,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        gated_mlp=True,
        rotary_dim=16,
        seed=0,
    )
    return HookedTransformer(cfg).eval()


def relative_component(x: torch.Tensor, r: torch.Tensor) -> float:
    """max over positions of |x·r̂| / ‖x‖."""
    r = r / r.norm()
    return float(((x.double() @ r.double()).abs() / x.double().norm(dim=-1)).max())


def cached_tokenizer(name: str):
    """The tokenizer of an embedded model from the model cache (skips if it is not there)."""
    from moia.lm.loading import cache_dir

    path = cache_dir() / "models" / name
    if not (path / "tokenizer_config.json").exists():
        pytest.skip(f"{name} is not in the model cache")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# ---------------------------------------------------------------------- emotion tests (PROTOCOL §7)
@pytest.fixture(scope="session")
def smollm2_tok():
    return cached_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_tok(smollm2_tok):
    """A 3-layer random HookedTransformer with SmolLM2's tokenizer (real tokens, fast forwards)."""
    if not HAS_HOOKED:
        pytest.skip("transformer-lens >= 4 has no HookedTransformer")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=3,
        d_model=32,
        n_heads=4,
        d_head=8,
        d_mlp=64,
        d_vocab=len(smollm2_tok),
        n_ctx=256,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        gated_mlp=True,
        rotary_dim=8,
        seed=1,
        model_name="tiny-tok",
    )
    return HookedTransformer(cfg, tokenizer=smollm2_tok).eval()


GEMMA3_IT_TEMPLATE = os.path.join(os.path.dirname(__file__), "fixtures", "gemma3_it_chat_template.jinja")


@pytest.fixture(scope="session")
def gemma3_it_tokenizer():
    """The real Gemma 3 tokenizer (the embedded gemma-3-270m's: Gemma 3's vocabulary, no template)
    with Gemma 3 IT's real chat template, ``tests/fixtures/gemma3_it_chat_template.jinja``."""
    tok = cached_tokenizer("gemma-3-270m")
    with open(GEMMA3_IT_TEMPLATE, encoding="utf-8") as f:
        tok.chat_template = f.read()
    return tok
