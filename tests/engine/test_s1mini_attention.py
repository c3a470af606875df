"""The decode step's lean parts: packed-GQA attention equals grouped-query attention and reads the cache
as it is (no head-expanded or fp32 copy), RoPE rows give the same floats as the pairwise rotation, and
the step stays within its operator budget at real S1-mini shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ops.bench.s1mini_ops import count_step_ops
from stream_workers.engine.s1mini.config import s1mini_config
from stream_workers.engine.s1mini.decode_step import decode_mask
from stream_workers.engine.s1mini.layers import Attention, ColumnScatter, apply_rope, attend, rope_at, rope_rows, rope_table


def reference(q, k, v, mask=None, causal=False):
    """Grouped-query attention the plain way: K/V repeated per query head (what enable_gqa means).
    ``causal`` as the model uses it: top-left causal for several queries; a single query sees every key."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None and q.shape[2] > 1)


@pytest.mark.parametrize("s", [1, 5])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
def test_packed_attention_equals_grouped_query_attention(s, mask_kind):
    g = torch.Generator().manual_seed(s)
    b, h, kv, n, d = 3, 8, 2, 12, 16
    q = torch.randn(b, s, h, d, generator=g).transpose(1, 2)  # as Attention.qkv makes it (not contiguous)
    k, v = torch.randn(b, kv, n, d, generator=g), torch.randn(b, kv, n, d, generator=g)
    lens = torch.tensor([3, 12, 7])
    keep = (torch.arange(n).view(1, 1, 1, n) < lens.view(-1, 1, 1, 1)).expand(b, 1, s, n)
    mask = {"none": None, "causal": None, "bool": keep,
            "float": torch.where(keep, 0.0, float("-inf"))}[mask_kind]
    causal = mask_kind == "causal"
    got = attend(q, k, v, mask, causal=causal)
    want = reference(q, k, v, mask, causal)
    assert got.shape == (b, h, s, d)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if not causal:  # and what the step used before: SDPA's own GQA
        torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True), rtol=1e-5, atol=1e-6)


def test_rope_rows_give_the_floats_of_the_pairwise_rotation():
    table = rope_table(64, 16, 10_000.0)
    x = torch.randn(2, 64, 4, 16, dtype=torch.bfloat16)
    xf = x.float().reshape(2, 64, 4, 8, 2)
    cos, sin = table[..., 0].unsqueeze(1), table[..., 1].unsqueeze(1)  # (64, 1, 8)
    x0, x1 = xf[..., 0], xf[..., 1]
    pairwise = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).reshape(2, 64, 4, 16).type_as(x)
    assert torch.equal(apply_rope(x, rope_at(rope_rows(table), slice(0, 64))), pairwise)


class _SdpaCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.calls.append((args, dict(kwargs or {})))
        return func(*args, **(kwargs or {}))


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        self.ops.append((func.name(), ins, tuple(out.shape) if isinstance(out, torch.Tensor) else None,
                         out.dtype if isinstance(out, torch.Tensor) else None))
        return out


def _decode_attention(device):
    """One decode attention call at S1-mini's head layout (16 query heads over 8 K/V heads), bf16."""
    torch.manual_seed(0)
    b, kvb, cap, d = 2, 64, 96, 128
    with torch.device(device):
        attn = Attention(256, 16, 8, d, qk_norm=True).to(torch.bfloat16)
        k_buf = torch.randn(b, 8, cap, d, dtype=torch.bfloat16)
        v_buf = torch.randn(b, 8, cap, d, dtype=torch.bfloat16)
        x = torch.randn(b, 1, 256, dtype=torch.bfloat16)
        lens = torch.tensor([5, 40])
    cos, sin = rope_rows(rope_table(cap, d, 1e6).to(device))
    rope = rope_at((cos, sin), lens.view(b, 1))
    return attn, x, rope, k_buf, v_buf, lens.view(b, 1, 1, 1), decode_mask(lens, kvb, torch.bfloat16), kvb


def test_decode_attention_reads_the_cache_as_it_is():
    """SDPA gets the cache's own K/V (same storage, dtype and 8 heads) and no enable_gqa, so CUDA's fused
    kernels accept the call; and no operator of the call makes a head-expanded or fp32 copy of K/V.
    On ``meta`` SDPA decomposes into its math form (the CUDA fallback the old call took): the old
    enable_gqa form shows up there as a clone of K/V expanded to 16 heads."""
    attn, x, rope, k_buf, v_buf, col, mask, kvb = _decode_attention("cpu")
    with torch.no_grad(), _SdpaCalls() as seen, _Ops() as ops:
        attn(x, rope, mask, write=ColumnScatter(k_buf, v_buf, col, kvb))
    (args, kwargs), = seen.calls
    q, k, v = args[:3]
    assert not kwargs.get("enable_gqa", False)
    assert q.shape[1] == k.shape[1] == v.shape[1] == 8
    assert k.dtype == v.dtype == torch.bfloat16
    assert k.untyped_storage().data_ptr() == k_buf.untyped_storage().data_ptr()
    assert v.untyped_storage().data_ptr() == v_buf.untyped_storage().data_ptr()
    cache_sized = [o for o in ops.ops if o[2] is not None and len(o[2]) >= 3 and kvb in o[2] and o[2][-1] == 128]
    assert not [o for o in cache_sized if o[0] in ("aten::clone", "aten::_to_copy", "aten::expand", "aten::repeat_interleave")], cache_sized
    assert [o[0] for o in ops.ops if "scaled_dot_product" in o[0]] == ["aten::_scaled_dot_product_flash_attention_for_cpu"]

    attn, x, rope, k_buf, v_buf, col, mask, kvb = _decode_attention("meta")
    with torch.no_grad(), _Ops() as ops:
        attn(x, rope, mask, write=ColumnScatter(k_buf, v_buf, col, kvb))
    k_numel = k_buf[:, :, :kvb].numel()

    def expanded(trace):  # an operator whose output holds K/V columns for more heads than the cache has
        return [o for o in trace if o[2] is not None and kvb in o[2] and torch.Size(o[2]).numel() > k_numel]

    assert not expanded(ops.ops), expanded(ops.ops)
    with torch.no_grad(), _Ops() as old:  # the old call, for contrast: K/V cloned per query head
        q = torch.zeros(2, 16, 1, 128, dtype=torch.bfloat16, device="meta")
        F.scaled_dot_product_attention(q, k_buf[:, :, :kvb], v_buf[:, :, :kvb], attn_mask=mask > -1, enable_gqa=True)
    assert [o[0] for o in expanded(old.ops)].count("aten::clone") == 2  # K and V, each copied per query head


def test_decode_step_operator_budget_at_real_shapes():
    """Operators per decode step at S1-mini's shapes (counted on meta; see ops/bench/s1mini_ops.py):
    5,948 before this step was made lean; the CUDA-eager count must stay within 3,000."""
    cfg = s1mini_config()
    one = count_step_ops(1, cfg)
    assert one["cuda_eager"] <= 3000, one
    assert count_step_ops(8, cfg)["cuda_eager"] == one["cuda_eager"]  # the count does not grow with the batch


def test_fused_ffn_projections_equal_the_two_matmuls_and_keep_the_checkpoint_layout():
    from stream_workers.engine.s1mini.layers import FeedForward

    torch.manual_seed(0)
    ff = FeedForward(32, 48).eval()
    x = torch.randn(3, 2, 32)
    keys = sorted(ff.state_dict())
    with torch.no_grad():
        want = ff(x)
        ff.fuse()
        assert ff.w13 is not None and ff.w1.weight.data_ptr() == ff.w13.data_ptr()  # views, not a copy
        torch.testing.assert_close(ff(x), want, rtol=1e-6, atol=1e-6)
        assert sorted(ff.state_dict()) == keys  # w13 is not saved: checkpoints keep w1 / w3
        fresh = FeedForward(32, 48)
        ff.load_state_dict(fresh.state_dict())  # loading new weights undoes the fusion ...
        assert ff.w13 is None
        torch.testing.assert_close(ff(x), fresh(x))  # ... so the new weights are the ones used


def test_prefill_decode_and_the_reference_run_the_one_attention(s1_model, s1_tok, monkeypatch):
    """Issue 20: the slot decoder's prefill and decode step and the reference decoder all attend through
    ``Attention.forward`` (each differs only in where it writes K/V); nothing else calls ``attend``."""
    from ops.bench.s1mini_reference import generate_batch
    from stream_workers.engine.s1mini import decode_step as step_module
    from stream_workers.engine.s1mini import layers
    from stream_workers.engine.s1mini.slots import RowRequest, SlotDecoder
    from tests.engine.s1mini_prompts import prompt

    writes: list[str] = []
    inside = [0]
    forward, real_attend = layers.Attention.forward, layers.attend

    def counting_forward(self, x, rope, mask, kv=None, start=0, is_causal=False, write=None):
        writes.append(type(write).__name__ if write is not None else ("SliceWrite" if kv is not None else "none"))
        inside[0] += 1
        try:
            return forward(self, x, rope, mask, kv, start, is_causal, write)
        finally:
            inside[0] -= 1

    def guarded_attend(*args, **kwargs):
        assert inside[0], "attention computed outside Attention.forward"
        return real_attend(*args, **kwargs)

    monkeypatch.setattr(layers.Attention, "forward", counting_forward)
    monkeypatch.setattr(layers, "attend", guarded_attend)
    assert not hasattr(step_module, "attend") and not hasattr(step_module, "_attend_decode")
    n_slow, n_fast = len(s1_model.layers), len(s1_model.fast_layers)
    dec = SlotDecoder(s1_model, end_token_id=s1_tok.im_end_id, residual_vocab=32, slots=2, capacity=64, kv_min=32)
    dec.add([(RowRequest(prompt(s1_tok, "one attention"), 3), "a")])
    assert writes == ["SlotRowsWrite"] * n_slow
    writes.clear()
    dec.step()
    assert writes.count("ColumnScatter") == n_slow
    assert writes.count("SliceWrite") >= n_fast  # the fast loop, per codebook
    writes.clear()
    generate_batch(s1_model, [RowRequest(prompt(s1_tok, "one attention"), 2)], end_token_id=s1_tok.im_end_id,
                   residual_vocab=32)
    assert set(writes) == {"SliceWrite"} and len(writes) >= n_slow
