"""The perplexity probe: the perplexity of each target trace given its prompt, batched by token budget.

Kang et al. (arXiv 2411.07681) call a training example *memorized* once the perplexity of its target
reasoning trace falls to a threshold. :func:`target_perplexity` computes it for many examples at once,
under teacher forcing, in ``eval()`` mode (each submodule's training flag restored afterwards).
See ``docs/probes.md`` for the batching strategy and its measured cost.
"""

from __future__ import annotations

import weakref
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
    hidden_size,
    is_hf_model,
    logits_of,
    model_device,
    split_head,
)

__all__ = ["target_perplexity"]

#: On a CPU model a batch holds at most this many activations (padded tokens x hidden size; None: no cap).
#: Larger batches fall out of cache and get slower per token (docs/performance.md): measured fastest at
#: 2-4 rows of ~150 BPE tokens for hidden sizes 256-512, and at ~2k character tokens for hidden size 96.
_CPU_MAX_BATCH_ACTIVATIONS: int | None = 2**18
#: The CPU token cap of a model whose config names no hidden size.
_CPU_MAX_BATCH_TOKENS_UNKNOWN_WIDTH = 2048
#: The LM head scores at most this many logits (positions x vocabulary) at once: memory, not speed.
_HEAD_CHUNK_LOGITS = 2**24
#: Whether a model's (body, head) split gives its own logits: checked once per model, on its first batch.
_SPLIT_CHECKED: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


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
    sequence longer than the budget goes alone). On a CPU model a batch also holds at most
    ``2**18`` activations (padded tokens x hidden size: 1,024 tokens at width 256): larger batches
    fall out of cache and run slower per token (see ``docs/performance.md``).

    Hugging Face causal LMs run their transformer body over every token and their LM head (and the
    cross-entropy) only on the target positions: the logits of prompt and padding positions are never
    computed. The split into body and head is checked once per model against its own forward on the
    first batch; a model whose logits are more than ``head(last hidden state)`` (soft-capping,
    scaling) runs its full forward instead, skipping the LM head only on the leading positions no row
    scores (``logits_to_keep``). Other modules are called as ``model(input_ids=...)``.

    Sequences are RIGHT-padded with ``pad_token_id`` and the padding is not masked: under causal
    attention a target token's logits depend only on the tokens before it, never on padding to its
    right. Models whose ``forward`` takes an ``attention_mask`` get an all-ones one (Hugging Face's
    causal-mask code reduces it to the plain causal case, so fused attention kernels stay usable, and
    it keeps the "padding without attention mask" warning away); Hugging Face models also get
    ``use_cache=False``. The padding value is never scored; it only has to be a valid token id.

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
            less on CPU, see above). The hidden states of a batch take ``max_batch_tokens x hidden``
            floats; the LM head scores at most ``2**24`` logits at a time.
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
    batches = _token_budget_batches(lengths, _batch_budget(model, device, max_batch_tokens))
    hf = is_hf_model(model)
    kwargs: dict[str, Any] = {"use_cache": False} if hf else {}
    pass_mask = hf or accepts_argument(model, "attention_mask")
    trim_logits = hf and declares_argument(model, "logits_to_keep")
    split = split_head(model) if _SPLIT_CHECKED.get(model, True) else None
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
                kwargs["attention_mask"] = torch.ones_like(input_ids)
            scored = _Scored(
                torch.tensor(rows, dtype=torch.long, device=device),
                torch.tensor(positions, dtype=torch.long, device=device),
                torch.tensor(labels, dtype=torch.long, device=device),
                first=min(len(prompts[i]) for i in batch) - 1,
            )
            if split is not None:
                token_nll = _split_nll(split, input_ids, scored, kwargs)
                if model not in _SPLIT_CHECKED:
                    full = _full_nll(model, input_ids, scored, kwargs, trim_logits)
                    _SPLIT_CHECKED[model] = _agree(token_nll, full, _dtype(model))
                    if not _SPLIT_CHECKED[model]:
                        split, token_nll = None, full
            else:
                token_nll = _full_nll(model, input_ids, scored, kwargs, trim_logits)
            nll_sum = torch.zeros(len(batch), dtype=torch.float32, device=token_nll.device).index_add_(
                0, scored.rows.to(token_nll.device), token_nll
            )
            counts = torch.tensor([len(targets[i]) for i in batch], dtype=torch.float32, device=token_nll.device)
            perplexity = torch.exp(nll_sum / counts).tolist()
            for i, value in zip(batch, perplexity, strict=True):
                values[i] = value
            if progress is not None:
                progress(len(batch))
    return torch.tensor(values, dtype=torch.float32)


class _Scored:
    """The scored positions of a batch: row, position of the logits, the label each one predicts; the first one."""

    def __init__(self, rows: Tensor, positions: Tensor, labels: Tensor, *, first: int) -> None:
        self.rows, self.positions, self.labels, self.first = rows, positions, labels, first


def _batch_budget(model: Any, device: torch.device, max_batch_tokens: int) -> int:
    """Return the token budget of one batch: ``max_batch_tokens``, on CPU capped so a batch stays in cache."""
    if device.type != "cpu" or _CPU_MAX_BATCH_ACTIVATIONS is None:
        return max_batch_tokens
    width = hidden_size(model)
    cap = _CPU_MAX_BATCH_ACTIVATIONS // width if width else _CPU_MAX_BATCH_TOKENS_UNKNOWN_WIDTH
    return min(max_batch_tokens, max(1, cap))


def _split_nll(
    split: tuple[torch.nn.Module, torch.nn.Module], input_ids: Tensor, scored: _Scored, kwargs: dict[str, Any]
) -> Tensor:
    """Token cross-entropies from the body's hidden states at the scored positions and the head on those only."""
    body, head = split
    output = body(input_ids=input_ids, **kwargs)
    hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
    selected = hidden[scored.rows, scored.positions]
    step = max(1, _HEAD_CHUNK_LOGITS // max(1, int(getattr(head, "out_features", 0) or 1)))
    parts = [
        torch.nn.functional.cross_entropy(
            head(selected[start : start + step]).float(), scored.labels[start : start + step], reduction="none"
        )
        for start in range(0, selected.shape[0], step)
    ]
    return torch.cat(parts)


def _full_nll(model: Any, input_ids: Tensor, scored: _Scored, kwargs: dict[str, Any], trim_logits: bool) -> Tensor:
    """Token cross-entropies from the model's own forward (its LM head skipped only where no row scores)."""
    width = input_ids.shape[1]
    offset = scored.first if trim_logits else 0  # the first position any row scores
    extra = {"logits_to_keep": width - offset} if trim_logits else {}
    logits = logits_of(model(input_ids=input_ids, **kwargs, **extra))
    if logits.shape[1] != width - offset:
        raise TypeError(f"The model returned logits for {logits.shape[1]} positions, expected {width - offset}.")
    columns = scored.positions.to(logits.device) - offset
    picked = logits[scored.rows.to(logits.device), columns].float()
    return torch.nn.functional.cross_entropy(picked, scored.labels.to(logits.device), reduction="none")


def _agree(split: Tensor, full: Tensor, dtype: torch.dtype) -> bool:
    """Whether the split's token cross-entropies are the full forward's, to the rounding of the model's dtype."""
    tolerance = 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2
    return split.shape == full.shape and bool(
        torch.allclose(split, full.to(split.device), rtol=tolerance, atol=tolerance)
    )


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


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
