"""Tests for caspi.train.batches: the last-batch flag that closes an epoch's final step, the row split after a CUDA
OOM and the eval subset taken round-robin over domains."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from caspi.data.cuts import cut_domain, cut_text, read_manifest
from caspi.models.families import get_family
from caspi.train.batches import eval_subset, flag_last, split_rows


def test_flag_last_marks_only_the_final_item():
    assert list(flag_last([])) == []
    assert list(flag_last(["a"])) == [("a", True)]
    assert list(flag_last(iter("abc"))) == [("a", False), ("b", False), ("c", True)]


def test_split_rows_covers_every_row_once_and_keeps_none():
    inputs = {"labels": torch.arange(6).view(3, 2), "input_features": torch.zeros(3, 4, 5), "ctc_targets": None}
    whole = split_rows(inputs, 1)
    assert len(whole) == 1 and whole[0] is not inputs and whole[0].keys() == inputs.keys()  # a copy to pop from
    halves = split_rows(inputs, 2)
    assert [p["labels"].shape[0] for p in halves] == [1, 2] and all(p["ctc_targets"] is None for p in halves)
    assert torch.equal(torch.cat([p["labels"] for p in halves]), inputs["labels"])
    assert [p["labels"].shape[0] for p in split_rows(inputs, 8)] == [1, 1, 1]  # never an empty piece


def test_eval_subset_takes_each_domain_in_turn(train_corpus):
    manifest = train_corpus / "eval.jsonl.gz"
    cuts = sorted(read_manifest(manifest), key=lambda c: c.id)
    domains = sorted({cut_domain(c) for c in cuts})
    assert len(domains) > 1 and len(cuts) > len(domains)
    recipe = SimpleNamespace(data=SimpleNamespace(eval_manifest=str(manifest)),
                             eval=SimpleNamespace(samples=len(domains) + 1))
    subset = eval_subset(recipe, get_family("qwen3_asr"))
    first_of = {d: next(c for c in cuts if cut_domain(c) == d) for d in domains}
    second_of_first = [c for c in cuts if cut_domain(c) == domains[0]][1]
    assert subset["ids"] == [first_of[d].id for d in domains] + [second_of_first.id]
    assert subset["domains"] == domains + [domains[0]]
    assert subset["refs"] == [cut_text(first_of[d]) for d in domains] + [cut_text(second_of_first)]
    assert all(a.ndim == 1 and a.dtype == np.float32 for a in subset["audio"])
    recipe.data.eval_manifest = None
    assert eval_subset(recipe, get_family("qwen3_asr")) is None
