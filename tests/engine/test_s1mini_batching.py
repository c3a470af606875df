"""Batched decoding: left padding, per-row positions, per-row stop, per-row sampling and seeds."""

from __future__ import annotations

import torch

from ops.bench.s1mini_reference import generate_batch
from stream_workers.engine.s1mini.sampling import apply_repetition_penalty, sample_rows
from stream_workers.engine.s1mini.slots import RowRequest
from tests.engine.s1mini_prompts import prompt


def run(model, tok, rows, **kw):
    return generate_batch(model, rows, end_token_id=tok.im_end_id, residual_vocab=32, **kw)


def test_greedy_batched_equals_one_at_a_time(s1_model, s1_tok):
    rows = [
        RowRequest(prompt(s1_tok, "hello there"), 12),
        RowRequest(prompt(s1_tok, "hi"), 7),
        RowRequest(prompt(s1_tok, "a much longer sentence, with punctuation!", 3, seed=1), 15),
        RowRequest(prompt(s1_tok, "x"), 1),
    ]
    batched = run(s1_model, s1_tok, rows)
    assert [r.codes.shape for r in batched] == [(10, 12), (10, 7), (10, 15), (10, 1)]
    for row, got in zip(rows, batched, strict=True):
        alone = run(s1_model, s1_tok, [row])[0]
        assert torch.equal(got.codes, alone.codes)
        assert not got.finished


def test_per_row_stop_on_end_token(s1_model, s1_tok):
    stop_at = {0: 3, 1: None, 2: 0}  # row -> step at which the end token is forced

    def hook(step, active, logits):
        logits = logits.clone()
        for i, orig in enumerate(active):
            if stop_at[orig] == step:
                logits[i, -1] = 1e9  # the last restricted slot is <|im_end|>
        return logits

    rows = [RowRequest(prompt(s1_tok, t), 10) for t in ("first", "second one", "third")]
    out = run(s1_model, s1_tok, rows, slow_logits_hook=hook)
    assert [r.finished for r in out] == [True, False, True]
    assert [r.codes.shape[1] for r in out] == [3, 10, 0]
    assert [r.steps for r in out] == [4, 10, 1]
    # the rows that stopped early leave the batch; the survivor matches its solo run
    alone = run(s1_model, s1_tok, [rows[1]])[0]
    assert torch.equal(out[1].codes, alone.codes)
    # and the early stopper's frames match its solo run up to the stop
    alone0 = run(s1_model, s1_tok, [rows[0]])[0]
    assert torch.equal(out[0].codes, alone0.codes[:, :3])


@torch.inference_mode()
def test_cached_batched_logits_match_naive_forward(s1_model, s1_tok):
    """Independent of any reference: the left-padded, cached, batched path vs a cache-free,
    unbatched full-sequence forward (plain causal attention) over the same tokens."""
    m = s1_model
    prompts = [prompt(s1_tok, "hello world", 2, 3), prompt(s1_tok, "hi"), prompt(s1_tok, "longer prompt text here", 4, 4)]
    rows = [RowRequest(p, 5) for p in prompts]
    captured: dict[int, list[torch.Tensor]] = {0: [], 1: [], 2: []}

    def hook(step, active, logits):
        for i, orig in enumerate(active):
            captured[orig].append(logits[i].clone())
        return logits

    out = run(m, s1_tok, rows, slow_logits_hook=hook)
    sb, n_sem = s1_tok.semantic_begin_id, s1_tok.num_semantic
    worst = 0.0
    for b, (p, r) in enumerate(zip(prompts, out, strict=True)):
        frames = torch.cat([r.codes[:1] + sb, r.codes], dim=0)  # (11, T)
        full = torch.cat([p, frames], dim=1)
        logits, hidden = m.forward_slow(full[None], torch.arange(full.shape[1])[None], None, return_all=True)
        L = p.shape[1]
        for t in range(r.codes.shape[1]):
            naive = torch.cat([logits[0, L - 1 + t, sb : sb + n_sem], logits[0, L - 1 + t, s1_tok.im_end_id :][:1]])
            worst = max(worst, (naive - captured[b][t]).abs().max().item())
        # fast transformer: cache-free pass over the frame vs the codes the cached path chose (greedy)
        for t in range(r.codes.shape[1]):
            fl = m.forward_fast_full(hidden[0, L - 1 + t][None], r.codes[:9, t][None])
            assert torch.equal(fl[0, 1:, :32].argmax(-1), r.codes[1:, t])
    assert worst < 1e-4, worst


def test_per_row_seeds_independent_of_batch_mates(s1_model, s1_tok):
    a = RowRequest(prompt(s1_tok, "seeded row"), 10, temperature=0.9, top_p=0.95, repetition_penalty=1.2, seed=123)
    b = RowRequest(prompt(s1_tok, "another, longer, batch-mate"), 6, temperature=1.0, top_p=0.9, seed=5)
    c = RowRequest(prompt(s1_tok, "greedy"), 4, temperature=0.0)
    alone = run(s1_model, s1_tok, [a])[0]
    together = run(s1_model, s1_tok, [b, a, c])
    assert torch.equal(alone.codes, together[1].codes)
    assert torch.equal(run(s1_model, s1_tok, [c])[0].codes, together[2].codes)
    other_seed = run(s1_model, s1_tok, [RowRequest(a.prompt, 10, 0.9, 0.95, 1.2, seed=124)])[0]
    assert not torch.equal(alone.codes, other_seed.codes)


def test_sampling_rules():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [0.0, 1.0, 2.0, -3.0]])
    prev = torch.tensor([[3, 1, -1], [-1, -1, -1]])
    out = apply_repetition_penalty(logits, prev, torch.tensor([2.0, 2.0]))
    assert torch.allclose(out, torch.tensor([[2.0, -2.0, 0.5, 1.5], [0.0, 1.0, 2.0, -3.0]]))
    t, p, rp = torch.tensor([0.0, 1.0]), torch.tensor([0.8, 1e-6]), torch.tensor([1.0, 1.0])
    gens = [None, torch.Generator().manual_seed(0)]
    # row 0 greedy; row 1 top_p tiny keeps only the most likely token
    for _ in range(5):
        assert sample_rows(logits, t, p, rp, gens, [True, False]).tolist() == [3, 2]
    # top_p=1, temperature=1: draws follow the softmax (rough frequency check)
    g = torch.Generator().manual_seed(1)
    lg = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    draws = [sample_rows(lg, torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([1.0]), [g], [False]).item() for _ in range(600)]
    freq = [draws.count(i) / 600 for i in range(3)]
    assert abs(freq[0] - 0.7) < 0.07 and abs(freq[2] - 0.1) < 0.05
