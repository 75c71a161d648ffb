"""Tokenized training examples and their collation (prompt masked out of the labels)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_premem.probes import encode_prompt_target

#: The authors' prompt and target formats (Kang et al.): prompt ``question + "\nAnswer:"``,
#: target ``" " + solution + "\nDone."``.
DEFAULT_PROMPT_TEMPLATE = "{question}\nAnswer:"
DEFAULT_TARGET_TEMPLATE = " {solution}\nDone."
IGNORE_INDEX = -100


def format_example(
    example: Mapping[str, Any],
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    target_template: str = DEFAULT_TARGET_TEMPLATE,
) -> tuple[str, str]:
    """Return ``(prompt, target)`` text of an ``{id, question, solution}`` mapping."""
    return prompt_template.format(**example), target_template.format(**example)


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
