"""The decoding engine's KV cache (``moia.lm.decoding.kv_cache``): Hugging Face's ``DynamicCache`` with
layers that append into reserved storage instead of concatenating every step. The reference is HF's
own ``DynamicCache``, driven through the same operations."""

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from moia.lm.decoding import Stepper, kv_cache

H, D = 2, 4


def _kv(batch: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, H, n, D, generator=g), torch.randn(batch, H, n, D, generator=g)


def _same(ours, ref, layers: int = 2) -> None:
    assert ours.get_seq_length() == ref.get_seq_length()
    for i in range(layers):
        assert torch.equal(ours.layers[i].keys, ref.layers[i].keys)
        assert torch.equal(ours.layers[i].values, ref.layers[i].values)


@torch.no_grad()
def test_every_operation_the_engine_uses_matches_dynamic_cache():
    """Prefill, batch repeat (the shared prefix), suffix, steps past the reserve, crop, row
    permutation and selection: the keys and values attention sees equal DynamicCache's after each."""
    ours, ref = kv_cache(headroom=3), DynamicCache()
    seed = 0

    def update(batch: int, n: int) -> None:
        nonlocal seed
        seed += 1
        for layer in range(2):
            k, v = _kv(batch, n, seed * 10 + layer)
            got, want = ours.update(k, v, layer), ref.update(k, v, layer)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    update(1, 5)
    _same(ours, ref)
    ours.batch_repeat_interleave(3)
    ref.batch_repeat_interleave(3)
    _same(ours, ref)
    update(3, 4)
    for _ in range(6):  # headroom 3: the fourth step outgrows the storage and reserves again
        update(3, 1)
        _same(ours, ref)
    ours.crop(-2)
    ref.crop(-2)
    update(3, 1)
    _same(ours, ref)
    for index in ([2, 0, 1], [2, 0]):  # a permutation keeps the storage's shape: it must not be reused
        ours.batch_select_indices(torch.tensor(index))
        ref.batch_select_indices(torch.tensor(index))
        update(len(index), 1)
        _same(ours, ref)


@torch.no_grad()
def test_steps_within_the_headroom_write_in_place():
    """What the layer is for: after the prefill reserves room for 4 more tokens, 4 steps neither
    allocate nor copy the cache (the storage stays the same tensor), and the fifth reserves again."""
    cache = kv_cache(headroom=4)
    cache.update(*_kv(2, 6, 0), 0)
    layer = cache.layers[0]
    storage = layer.storage[0]
    assert storage.shape[-2] == 10
    for step in range(4):
        keys, _ = cache.update(*_kv(2, 1, step + 1), 0)
        assert layer.storage[0] is storage and keys.data_ptr() == storage.data_ptr()
    cache.update(*_kv(2, 1, 9), 0)
    assert layer.storage[0] is not storage and layer.storage[0].shape[-2] == 15


def test_under_autograd_it_concatenates_and_gradients_equal_dynamic_cache():
    """The bias trainer backpropagates through the cache. A step that wrote into storage whose
    earlier view a product saved for the backward pass would break it ("modified by an inplace
    operation"), so with gradients on the layer concatenates; the gradients are DynamicCache's."""
    grads = []
    for cache in (kv_cache(headroom=8), DynamicCache()):
        k0, v0 = (t.requires_grad_() for t in _kv(1, 3, 0))
        keys, values = cache.update(k0, v0, 0)
        loss = (values**2).sum() + (keys * 3).sum()  # saves the first values for the backward pass
        keys, values = cache.update(*(t.requires_grad_() for t in _kv(1, 2, 1)), 0)
        (loss + (keys * 2).sum() + (values**2).sum()).backward()
        grads.append((k0.grad, v0.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_inference_mode_appends_in_place_too():
    """Views made under ``torch.inference_mode`` have no ``_base``: the storage is recognised by
    pointer and strides, so steps still write in place there."""
    with torch.inference_mode():
        cache = kv_cache(headroom=3)
        cache.update(*_kv(2, 5, 0), 0)
        storage = cache.layers[0].storage[0]
        for step in range(3):
            cache.update(*_kv(2, 1, step + 1), 0)
        assert cache.layers[0].storage[0] is storage and cache.get_seq_length() == 8


@torch.no_grad()
def test_keys_and_values_of_different_widths():
    """Models that cache keys and values of different widths (DeepSeek's compressed latents, models
    with their own value head size) get storage of each one's shape."""
    ours, ref = kv_cache(headroom=2), DynamicCache()
    for n, seed in ((4, 0), (1, 1), (1, 2), (1, 3)):
        g = torch.Generator().manual_seed(seed)
        k, v = torch.randn(2, 1, n, 8, generator=g), torch.randn(2, 1, n, 3, generator=g)
        got, want = ours.update(k, v, 0), ref.update(k, v, 0)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@torch.no_grad()
def test_states_that_do_not_match_the_cache_fail_as_dynamic_cache_fails():
    """A batch-1 cache given 3 rows (a forgotten repeat) is DynamicCache's error, not a broadcast."""
    for cache in (kv_cache(headroom=4), DynamicCache()):
        cache.update(*_kv(1, 4, 0), 0)
        with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
            cache.update(*_kv(3, 1, 1), 0)


def test_generation_reserves_the_new_tokens_once(tiny_hf_dirs, monkeypatch):
    """``generate_tokens`` tells the cache how many tokens are to come: the storage reserved at the
    prefill holds prompt + max_new_tokens and is never reallocated (with no headroom every step
    would reallocate, as concatenation copies)."""
    import moia.lm.decoding as decoding
    from moia.lm.native import NativeModel
    from tests.tiny_hf import tokenizer

    hf = AutoModelForCausalLM.from_pretrained(tiny_hf_dirs["llama"]).eval()
    caches, storages = [], set()
    original = decoding.kv_cache

    def spy(headroom: int = 0):
        caches.append(original(headroom))
        return caches[-1]

    monkeypatch.setattr(decoding, "kv_cache", spy)
    layer_update = decoding._reserved_layer_class().update

    def record(self, *args, **kwargs):
        out = layer_update(self, *args, **kwargs)
        storages.add(id(self.storage[0]))
        return out

    monkeypatch.setattr(decoding._reserved_layer_class(), "update", record)
    tokens = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    new = decoding.generate_tokens(
        NativeModel(hf, tokenizer()), tokens, (tokens != 0).long(), max_new_tokens=8
    )
    assert max(len(r) for r in new) >= 3  # decode steps ran (the random model's tokens are not EOS)
    (cache,) = caches
    assert all(layer.storage[0].shape[-2] == 5 + 8 for layer in cache.layers)
    assert len(storages) == len(cache.layers)  # one storage per layer for the whole generation


@pytest.mark.parametrize("kind", ["llama", "gemma"])
@torch.no_grad()
def test_cached_logits_equal_hf_with_its_own_cache(tiny_hf_dirs, kind):
    """A left-padded batch through the Stepper (reserved cache), prefill then 5 steps, against the
    HF model fed the same tokens with a DynamicCache; Gemma 3's sliding-window layers included."""
    from moia.lm.decoding import position_ids
    from moia.lm.native import NativeModel
    from tests.tiny_hf import tokenizer

    hf = AutoModelForCausalLM.from_pretrained(tiny_hf_dirs[kind]).eval()
    model = NativeModel(hf, tokenizer())
    tokens = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = (tokens != 0).long()
    stepper = Stepper(model, 2, headroom=2)  # outgrows its reserve on the third step
    ref_cache, ref_mask = DynamicCache(), mask
    got = stepper.forward(tokens, mask)
    want = hf(
        input_ids=tokens, attention_mask=mask, position_ids=position_ids(mask), past_key_values=ref_cache
    )
    torch.testing.assert_close(got, want.logits[:, -1].float())
    for step in range(5):
        nxt = torch.tensor([[20 + step], [40 + step]])
        got = stepper.step(nxt)
        ref_mask = torch.cat([ref_mask, torch.ones_like(nxt)], 1)
        want = hf(
            input_ids=nxt,
            attention_mask=ref_mask,
            position_ids=position_ids(ref_mask)[:, -1:],
            past_key_values=ref_cache,
        )
        torch.testing.assert_close(got, want.logits[:, -1].float())


@torch.no_grad()
def test_a_row_slice_of_the_storage_is_not_taken_for_it():
    """Rows sliced off the storage share its pointer and strides but not its shape: the next update
    must not write the slice's rows into the whole storage (nor broadcast them over it)."""
    ours, ref = kv_cache(headroom=4), DynamicCache()
    for cache in (ours, ref):
        cache.update(*_kv(2, 3, 0), 0)
        layer = cache.layers[0]
        layer.keys, layer.values = layer.keys[:1], layer.values[:1]
        cache.update(*_kv(1, 1, 1), 0)
    _same(ours, ref, layers=1)
