"""Tokenized training examples, their dataset and their collation (prompt masked out of the labels)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset as TorchDataset

from lightning_premem.tokenization import encode_prompt_target, format_example

__all__ = ["IGNORE_INDEX", "FeatureDataset", "collate", "tokenize_example"]

#: The label of positions that take no loss (prompt and padding), as PyTorch's cross-entropy ignores it.
IGNORE_INDEX = -100


def tokenize_example(
    tokenizer: Any, example: Mapping[str, Any], prompt_template: str, target_template: str
) -> dict[str, Any]:
    """Token ids of one example for training: ``input_ids`` and ``labels`` with the prompt masked."""
    prompt, target = format_example(example, prompt_template, target_template)
    prompt_ids, target_ids = encode_prompt_target(tokenizer, prompt, target)
    return {
        "input_ids": prompt_ids + target_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
        "example_id": int(example["id"]),
    }


def collate(features: Sequence[Mapping[str, Any]], pad_token_id: int) -> dict[str, Tensor]:
    """Right-pad a list of :func:`tokenize_example` outputs into a batch (pad labels are ignored)."""
    longest = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        input_ids[row, :n] = torch.tensor(feature["input_ids"])
        labels[row, :n] = torch.tensor(feature["labels"])
        attention_mask[row, :n] = 1
    example_ids = torch.tensor([int(f["example_id"]) for f in features], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "example_ids": example_ids}


class FeatureDataset(TorchDataset[dict[str, Any]]):
    """A map-style dataset over tokenized examples (``input_ids``, ``labels``, ``example_id``).

    Args:
        features: the tokenized examples, as :func:`tokenize_example` returns them.
    """

    def __init__(self, features: Sequence[dict[str, Any]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]
