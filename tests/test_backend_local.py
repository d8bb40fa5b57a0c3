"""KV-cache helpers: scoring k candidate tokens in one tree-masked forward."""

from __future__ import annotations

import torch

from shared_core.backends.local import ModelRunner
from shared_core.models import LocalModel
from shared_core.result import GenerationStats


def test_score_candidates_matches_one_forward_per_candidate(tiny_model: LocalModel) -> None:
    stats = GenerationStats()
    runner = ModelRunner(tiny_model, stats)
    prompt = tiny_model.render("hello there", chat=False)
    _, cache = runner.prefill(prompt)
    candidates = torch.tensor([11, 42, 7, 300])
    tree = runner.score_candidates(cache, candidates)
    assert cache.get_seq_length() == len(prompt)  # the candidates were cropped off again
    for row, token in enumerate(candidates.tolist()):
        expected, _ = runner.prefill(prompt + [token])
        assert torch.allclose(tree[row], expected, atol=1e-4)
    assert stats.forward_passes["policy"] == 2 + len(candidates)
