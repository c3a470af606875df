"""The S1-mini prompt the engine tests decode from: the text, then ``n_frames`` of seeded random codes."""

import torch


def prompt(tok, text, n_frames=0, seed=0):
    ids = [tok.token_id("<|interleave|>")] + tok.encode("<|speaker:0|>" + text)
    p = torch.zeros(11, len(ids) + n_frames, dtype=torch.long)
    p[0, : len(ids)] = torch.tensor(ids)
    if n_frames:
        g = torch.Generator().manual_seed(seed)
        c = torch.randint(0, 32, (10, n_frames), generator=g)
        p[1:, len(ids) :] = c
        p[0, len(ids) :] = c[0] + tok.semantic_begin_id
    return p
