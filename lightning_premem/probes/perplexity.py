"""The perplexity probe: the perplexity of each target trace given its prompt, batched by token budget.

Kang et al. (arXiv 2411.07681) call a training example *memorized* once the perplexity of its target
reasoning trace falls to a threshold. :func:`target_perplexity` computes it for many examples at once,
under teacher forcing, in ``eval()`` mode (each submodule's training flag restored afterwards).
See ``docs/probes.md`` for the batching strategy and its measured cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_premem._checks import check_int, check_token_ids
from lightning_premem.probes.models import (
    accepts_argument,
    check_positions,
    check_vocab,
    declares_argument,
    eval_mode,
    is_hf_model,
    logits_of,
    model_device,
)

__all__ = ["target_perplexity"]

#: ``target_perplexity`` caps its token budget at this on a CPU model (None: no cap). Measured on
#: 2 CPU cores with 0.5-1 M-parameter GPT-2s (docs/performance.md): padded batches beyond ~2k
#: tokens fall out of cache and get slower per token than batch 1 on ~600-token sequences.
_CPU_MAX_BATCH_TOKENS: int | None = 2048


def target_perplexity(
    model: Any,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_token_id: int,
    max_batch_tokens: int = 8192,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """Perplexity of each target trace given its prompt, under teacher forcing.

    For each ``(prompt_ids, target_ids)`` the result is ``exp`` of the mean token cross-entropy
    of the target tokens given the prompt and the preceding target tokens; prompt tokens are
    not scored.

    Batching: the pairs are sorted by total length (longest first) and packed greedily into
    batches whose padded size ``rows x longest sequence`` stays within ``max_batch_tokens`` (a
    sequence longer than the budget goes alone). On a CPU model the budget is capped at 2048
    tokens: larger padded batches fall out of cache and run slower per token (see
    ``docs/performance.md``). Hugging Face models that take ``logits_to_keep`` skip the LM head
    on the leading positions that no row of the batch scores. Sequences are RIGHT-padded with
    ``pad_token_id`` and the padding is not masked: under causal attention a target token's
    logits depend only on the tokens before it, never on padding to its right. Models whose
    ``forward`` takes an ``attention_mask`` get an all-ones one (Hugging Face's causal-mask code
    reduces it to the plain causal case, so fused attention kernels stay usable, and it keeps
    the "padding without attention mask" warning away); Hugging Face models also get
    ``use_cache=False``; other modules are called as ``model(input_ids=...)``. The padding value
    is never scored; it only has to be a valid token id.

    The model runs in ``eval()`` mode under :func:`torch.inference_mode` on its own device; each
    submodule's previous training flag is restored afterwards, also on error. Everything is
    validated before the model is touched.

    Args:
        model: a causal LM: ``model(input_ids=...)`` returns logits ``[batch, length, vocab]`` or
            an object with a ``logits`` attribute (Hugging Face models).
        pairs: ``(prompt_ids, target_ids)`` per example, e.g. from :func:`encode_prompt_target`;
            both non-empty.
        pad_token_id: id used to right-pad (e.g. ``tokenizer.pad_token_id``, or the EOS id when
            the tokenizer has no pad token).
        max_batch_tokens: token budget of one forward pass (padded batch size x longest sequence;
            at most 2048 on CPU). The logits of a batch take about ``max_batch_tokens x vocab``
            floats of memory.
        progress: called after each batch with the number of examples that batch completed (an
            increment, as ``tqdm.update`` takes).

    Returns:
        ``[N]`` float32 CPU tensor of perplexities (each ``>= 1``), in the order of ``pairs``.

    Raises:
        TypeError: if an id is not an int.
        ValueError: on an empty prompt or target, a negative or out-of-vocabulary id, a sequence
            longer than the model's maximum positions, or a bad ``pad_token_id`` /
            ``max_batch_tokens``.

    Example:
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> _ = torch.manual_seed(0)
        >>> model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=32, n_embd=8, n_layer=1, n_head=2))
        >>> ppl = target_perplexity(model, [([1, 2, 3], [4, 5]), ([1], [6, 7, 8])], pad_token_id=0)
        >>> ppl.shape, ppl.dtype, bool((ppl > 1).all())
        (torch.Size([2]), torch.float32, True)
    """
    pad_token_id = check_int(pad_token_id, "pad_token_id", minimum=0)
    max_batch_tokens = check_int(max_batch_tokens, "max_batch_tokens", minimum=1)
    if progress is not None and not callable(progress):
        raise TypeError(f"`progress` must be a callable taking an int, or None; got {type(progress).__name__}.")
    prompts: list[list[int]] = []
    targets: list[list[int]] = []
    for index, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"pairs[{index}] must be a (prompt_ids, target_ids) pair, got {type(pair).__name__}.")
        prompt_ids = check_token_ids(pair[0], f"pairs[{index}] prompt ids")
        target_ids = check_token_ids(pair[1], f"pairs[{index}] target ids")
        if not prompt_ids:
            raise ValueError(
                f"pairs[{index}] has no prompt tokens; the first target token needs at least one token to condition "
                "on (e.g. a BOS). See encode_prompt_target."
            )
        if not target_ids:
            raise ValueError(f"pairs[{index}] has no target tokens; every example needs a non-empty target.")
        prompts.append(prompt_ids)
        targets.append(target_ids)
    lengths = [len(p) + len(t) for p, t in zip(prompts, targets, strict=True)]
    check_positions(model, lengths, what="prompt + target", hint="Truncate or drop these examples")
    check_vocab(model, [*prompts, *targets, [pad_token_id]])
    if not lengths:
        return torch.empty(0, dtype=torch.float32)

    device = model_device(model)
    if device.type == "cpu" and _CPU_MAX_BATCH_TOKENS is not None:
        max_batch_tokens = min(max_batch_tokens, _CPU_MAX_BATCH_TOKENS)
    batches = _token_budget_batches(lengths, max_batch_tokens)
    forward_kwargs: dict[str, Any] = {"use_cache": False} if is_hf_model(model) else {}
    pass_mask = bool(forward_kwargs) or accepts_argument(model, "attention_mask")
    # Hugging Face models can skip the LM head on the leading positions no row scores.
    trim_logits = bool(forward_kwargs) and declares_argument(model, "logits_to_keep")
    values = [0.0] * len(lengths)
    with eval_mode(model), torch.inference_mode():
        for batch in batches:
            width = max(lengths[i] for i in batch)
            input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            rows: list[int] = []
            positions: list[int] = []
            labels: list[int] = []
            for row, i in enumerate(batch):
                prompt_ids, target_ids = prompts[i], targets[i]
                input_ids[row, : lengths[i]] = torch.tensor(prompt_ids + target_ids, dtype=torch.long)
                start = len(prompt_ids) - 1  # the logits at position t predict token t + 1
                rows.extend([row] * len(target_ids))
                positions.extend(range(start, start + len(target_ids)))
                labels.extend(target_ids)
            input_ids = input_ids.to(device)
            if pass_mask:
                # All ones: the padding sits after every scored token, so it needs no masking; a
                # mask (rather than none) keeps Hugging Face from warning about possible padding.
                forward_kwargs["attention_mask"] = torch.ones_like(input_ids)
            offset = 0
            if trim_logits:
                offset = min(len(prompts[i]) for i in batch) - 1  # the first position any row scores
                forward_kwargs["logits_to_keep"] = width - offset
            logits = logits_of(model(input_ids=input_ids, **forward_kwargs))
            if logits.shape[1] != width - offset:
                raise TypeError(
                    f"The model returned logits for {logits.shape[1]} positions, expected {width - offset}."
                )
            row_index = torch.tensor(rows, dtype=torch.long, device=logits.device)
            columns = torch.tensor(positions, dtype=torch.long, device=logits.device) - offset
            scored = logits[row_index, columns].float()
            token_nll = torch.nn.functional.cross_entropy(
                scored, torch.tensor(labels, dtype=torch.long, device=logits.device), reduction="none"
            )
            nll_sum = torch.zeros(len(batch), dtype=torch.float32, device=logits.device).index_add_(
                0, row_index, token_nll
            )
            counts = torch.tensor([len(targets[i]) for i in batch], dtype=torch.float32, device=logits.device)
            perplexity = torch.exp(nll_sum / counts).tolist()
            for i, value in zip(batch, perplexity, strict=True):
                values[i] = value
            if progress is not None:
                progress(len(batch))
    return torch.tensor(values, dtype=torch.float32)


def _token_budget_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Sort indices by length (longest first) and pack them so that ``rows x longest <= budget``."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted longest first, so the first index of a batch sets its width.
        if current and (len(current) + 1) * lengths[current[0]] > max_batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
