r"""The two per-example probes of pre-memorization train accuracy.

Kang et al. (arXiv 2411.07681) measure, for each training example (a prompt and its target
reasoning trace), two numbers at every checkpoint:

- **the perplexity of the target trace** given the prompt (teacher forcing):
  :func:`target_perplexity`. An example counts as *memorized* once it falls to a threshold;
- **the accuracy of sampled answers**: ``k`` completions of the prompt (paper: ``k = 5``,
  temperature 0.8, top-p 0.95, stop at ``"\nDone."``), graded against the reference answer. The
  sampling is done by a :class:`CompletionSampler`; :class:`HFSampler` is the default one, built
  on Hugging Face ``model.generate``.

Both probes run the model in ``eval()`` mode under :func:`torch.inference_mode` and restore every
submodule's previous training flag afterwards, even when they raise. Sampling is seeded *per
example*: the completions of a prompt depend only on the prompt and its seed, not on which other
prompts share its batch, on the batch size, or on the rank that samples it.
See ``docs/probes.md`` for the batching strategy and how to plug in another generation engine.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

__all__ = [
    "DEFAULT_STOP",
    "CompletionSampler",
    "HFSampler",
    "encode_prompt_target",
    "target_perplexity",
]

#: The paper's stop string: targets end with ``"\nDone."``, and sampling stops there.
DEFAULT_STOP = "\nDone."

_MASK64 = (1 << 64) - 1

#: ``target_perplexity`` caps its token budget at this on a CPU model (None: no cap). Measured on
#: 2 CPU cores with 0.5-1 M-parameter GPT-2s (docs/performance.md): padded batches beyond ~2k
#: tokens fall out of cache and get slower per token than batch 1 on ~600-token sequences.
_CPU_MAX_BATCH_TOKENS: int | None = 2048


# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------


def encode_prompt_target(tokenizer: Any, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of a prompt and of its target trace, each tokenized once.

    The prompt is encoded as the tokenizer encodes text by default (with the special tokens it
    adds, e.g. a BOS); the target with ``add_special_tokens=False``. The boundary between prompt
    and target in ``prompt_ids + target_ids`` is ``len(prompt_ids)``: it comes from the token ids,
    never from re-tokenizing the prompt alone or the concatenated text.

    Args:
        tokenizer: a Hugging Face tokenizer (any callable returning a mapping with ``input_ids``).
        prompt: the prompt text.
        target: the target trace the model is trained to produce after the prompt.

    Returns:
        ``(prompt_ids, target_ids)`` as lists of ints.

    Raises:
        TypeError: if ``prompt`` or ``target`` is not a string.
        ValueError: if either encodes to no tokens.

    Example:
        >>> from lightning_premem.tokenization import char_tokenizer
        >>> encode_prompt_target(char_tokenizer("ab+= "), "a+b=", " ab")
        ([4, 6, 5, 7], [8, 4, 5])
    """
    if not isinstance(prompt, str):
        raise TypeError(f"`prompt` must be a string, got {type(prompt).__name__}.")
    if not isinstance(target, str):
        raise TypeError(f"`target` must be a string, got {type(target).__name__}.")
    prompt_ids = _id_list(tokenizer(prompt)["input_ids"], "prompt ids")
    target_ids = _id_list(tokenizer(target, add_special_tokens=False)["input_ids"], "target ids")
    if not prompt_ids:
        raise ValueError(
            f"The prompt {prompt[:50]!r} encodes to no tokens; the target's perplexity needs at least one prompt "
            "token to condition on. Use a non-empty prompt (or a tokenizer that adds a BOS token)."
        )
    if not target_ids:
        raise ValueError(f"The target {target[:50]!r} encodes to no tokens; every example needs a non-empty target.")
    return prompt_ids, target_ids


# --------------------------------------------------------------------------------------------
# Target perplexity
# --------------------------------------------------------------------------------------------


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
    pad_token_id = _check_int(pad_token_id, "pad_token_id", minimum=0)
    max_batch_tokens = _check_int(max_batch_tokens, "max_batch_tokens", minimum=1)
    if progress is not None and not callable(progress):
        raise TypeError(f"`progress` must be a callable taking an int, or None; got {type(progress).__name__}.")
    prompts: list[list[int]] = []
    targets: list[list[int]] = []
    for index, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"pairs[{index}] must be a (prompt_ids, target_ids) pair, got {type(pair).__name__}.")
        prompt_ids = _id_list(pair[0], f"pairs[{index}] prompt ids")
        target_ids = _id_list(pair[1], f"pairs[{index}] target ids")
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
    _check_positions(model, lengths, what="prompt + target", hint="Truncate or drop these examples")
    _check_vocab(model, [*prompts, *targets, [pad_token_id]])
    if not lengths:
        return torch.empty(0, dtype=torch.float32)

    device = _model_device(model)
    if device.type == "cpu" and _CPU_MAX_BATCH_TOKENS is not None:
        max_batch_tokens = min(max_batch_tokens, _CPU_MAX_BATCH_TOKENS)
    batches = _token_budget_batches(lengths, max_batch_tokens)
    forward_kwargs: dict[str, Any] = {"use_cache": False} if _is_hf_model(model) else {}
    pass_mask = bool(forward_kwargs) or _accepts_argument(model, "attention_mask")
    # Hugging Face models can skip the LM head on the leading positions no row scores.
    trim_logits = bool(forward_kwargs) and _declares_argument(model, "logits_to_keep")
    values = [0.0] * len(lengths)
    with _eval_mode(model), torch.inference_mode():
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
            logits = _logits(model(input_ids=input_ids, **forward_kwargs))
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


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


@runtime_checkable
class CompletionSampler(Protocol):
    """What the callback needs to sample answers: ``num_samples`` completions per prompt.

    Implementations must be *per-example deterministic*: ``seeds[i]`` determines prompt ``i``'s
    completions completely, so the same ``(prompt, seed)`` gives the same completions whatever
    else is in the call, in whatever order, on whatever rank. :class:`HFSampler` is the default;
    any object with these two members works (e.g. a vLLM engine with a per-request seed).

    Example:
        >>> class Echo:
        ...     num_samples = 2
        ...
        ...     def sample(self, prompts, seeds):
        ...         return [[f" {s}"] * self.num_samples for s in seeds]
        >>> isinstance(Echo(), CompletionSampler)
        True
    """

    num_samples: int

    def sample(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[list[str]]:
        """Return, for each prompt, ``num_samples`` completions (text after the prompt, cut before the stop)."""
        ...


class HFSampler:
    r"""Sample completions with Hugging Face ``model.generate``, seeded per example.

    Each prompt is expanded to ``num_samples`` rows; ``batch_size`` prompts go to one
    ``generate`` call (with its KV cache), LEFT-padded by hand with the tokenizer's pad id (or its
    EOS id when it has no pad token) and an attention mask; the tokenizer itself is never
    modified. Temperature and top-p are applied by a logits processor that then draws the next
    token of each row by inverse CDF from a uniform number that is a fixed hash of
    ``(seed, sample index, step)``, and hands ``generate`` (run greedily) logits that are ``-inf``
    everywhere except at that token. A row's completion therefore depends only on its prompt and
    seed -- not on the batch, the batch size, the order of prompts, the device or the global RNG.
    ``temperature == 0`` is greedy decoding (all samples then equal, and are computed once).

    Generation stops at EOS, after ``max_new_tokens`` tokens, or once the decoded completion
    contains ``stop``; completions are decoded without special tokens and cut before ``stop``.
    The generation settings are a fresh ``GenerationConfig``: sampling options of the model's own
    ``generation_config`` (temperature, top-p, top-k, repetition penalty, ...) are not used.

    Args:
        model: a Hugging Face causal LM (anything with ``generate``).
        tokenizer: its tokenizer; must have a pad or an EOS token.
        num_samples: completions per prompt (paper: 5).
        temperature: softmax temperature, ``>= 0`` (paper: 0.8); 0 means greedy.
        top_p: nucleus sampling mass in ``(0, 1]`` (paper: 0.95); 1 disables it.
        max_new_tokens: maximum number of generated tokens per completion.
        stop: stop string (paper: ``"\nDone."``), or None to stop only at EOS / the length limit.
        batch_size: prompts per ``generate`` call (each expands to ``num_samples`` rows).

    Example:
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from lightning_premem.tokenization import char_tokenizer
        >>> tok = char_tokenizer()
        >>> _ = torch.manual_seed(0)
        >>> model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=8, n_layer=1, n_head=2))
        >>> sampler = HFSampler(model, tok, num_samples=3, max_new_tokens=8)
        >>> out = sampler.sample(["1+1=", "2+2="], seeds=[7, 8])
        >>> [len(samples) for samples in out]
        [3, 3]
        >>> sampler.sample(["2+2="], seeds=[8]) == out[1:]
        True
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        num_samples: int = 5,
        temperature: float = 0.8,
        top_p: float = 0.95,
        max_new_tokens: int = 256,
        stop: str | None = DEFAULT_STOP,
        batch_size: int = 16,
    ) -> None:
        if not callable(getattr(model, "generate", None)):
            raise TypeError(
                f"`model` must be a Hugging Face generative model with a `generate` method, got {type(model).__name__}."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.num_samples = num_samples
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.stop = stop
        self.batch_size = batch_size
        self._check_settings()
        _generation_pad_id(tokenizer)

    def _check_settings(self) -> None:
        _check_int(self.num_samples, "num_samples", minimum=1)
        _check_int(self.max_new_tokens, "max_new_tokens", minimum=1)
        _check_int(self.batch_size, "batch_size", minimum=1)
        temperature = _check_real(self.temperature, "temperature")
        if temperature < 0:
            raise ValueError(f"`temperature` must be >= 0 (0 means greedy decoding), got {self.temperature!r}.")
        top_p = _check_real(self.top_p, "top_p")
        if not 0 < top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1] (1 disables nucleus sampling), got {self.top_p!r}.")
        if self.stop is not None and (not isinstance(self.stop, str) or not self.stop):
            raise ValueError(f"`stop` must be a non-empty string or None, got {self.stop!r}.")

    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[str]]:
        """Sample ``num_samples`` completions of each prompt.

        Args:
            prompts: prompt texts, encoded as the tokenizer encodes text by default (as in
                :func:`encode_prompt_target`).
            seeds: one int per prompt; ``seeds[i]`` determines prompt ``i``'s completions.
            progress: called after each ``generate`` call with the number of prompts it
                completed (an increment, as ``tqdm.update`` takes).

        Returns:
            ``out[i][j]`` is the ``j``-th completion of ``prompts[i]``: the generated text after
            the prompt, without special tokens, cut before the stop string.

        Raises:
            TypeError: if a prompt is not a string or a seed not an int.
            ValueError: if ``len(prompts) != len(seeds)``, a prompt encodes to no tokens, or a
                prompt plus ``max_new_tokens`` exceeds the model's maximum positions.
        """
        self._check_settings()
        if isinstance(prompts, str) or isinstance(seeds, (str, int)):
            raise TypeError("`prompts` and `seeds` must be sequences (one entry per prompt), not a single value.")
        prompts, seeds = list(prompts), list(seeds)
        if len(prompts) != len(seeds):
            raise ValueError(
                f"`prompts` and `seeds` must have the same length (one seed per prompt); "
                f"got {len(prompts)} prompts and {len(seeds)} seeds."
            )
        for index, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            if not isinstance(prompt, str):
                raise TypeError(f"prompts[{index}] must be a string, got {type(prompt).__name__}.")
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(f"seeds[{index}] must be an int, got {seed!r}.")
        if progress is not None and not callable(progress):
            raise TypeError(f"`progress` must be a callable taking an int, or None; got {type(progress).__name__}.")
        pad_id = _generation_pad_id(self.tokenizer)
        encoded = [
            _id_list(self.tokenizer(prompt)["input_ids"], f"prompts[{i}] ids") for i, prompt in enumerate(prompts)
        ]
        for index, ids in enumerate(encoded):
            if not ids:
                raise ValueError(
                    f"prompts[{index}] = {prompts[index][:50]!r} encodes to no tokens; nothing to continue."
                )
        _check_positions(
            self.model,
            [len(ids) + self.max_new_tokens for ids in encoded],
            what="prompt + max_new_tokens",
            hint="Lower `max_new_tokens` or shorten these prompts",
        )
        _check_vocab(self.model, encoded)

        results: list[list[str]] = [[] for _ in prompts]
        if not prompts:
            return results
        # Completions do not depend on the batch, so group prompts of similar length to pad less.
        order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
        with _eval_mode(self.model), torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                texts = self._generate(chunk, encoded, seeds, pad_id)
                for i, samples in zip(chunk, texts, strict=True):
                    results[i] = samples
                if progress is not None:
                    progress(len(chunk))
        return results

    def _generate(
        self, chunk: Sequence[int], encoded: Sequence[list[int]], seeds: Sequence[int], pad_id: int
    ) -> list[list[str]]:
        """Run one ``generate`` call for the prompts ``chunk``; return their completions."""
        greedy = self.temperature == 0
        rows_per_prompt = 1 if greedy else self.num_samples
        row_ids = [encoded[i] for i in chunk for _ in range(rows_per_prompt)]
        keys = [_row_key(seeds[i], j) for i in chunk for j in range(rows_per_prompt)]
        width = max(len(ids) for ids in row_ids)
        input_ids = torch.full((len(row_ids), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(row_ids), width), dtype=torch.long)
        for row, ids in enumerate(row_ids):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        device = _model_device(self.model)

        eos_ids = _eos_ids(self.tokenizer, self.model)
        processors = LogitsProcessorList()
        if not greedy:
            processors.append(_SeededSampling(keys, float(self.temperature), float(self.top_p), prompt_width=width))
        criteria = StoppingCriteriaList()
        if self.stop is not None:
            criteria.append(_StopString(self.tokenizer, self.stop, eos_ids, prompt_width=width, rows=len(row_ids)))
        config = _generation_config(self.max_new_tokens, pad_id, eos_ids)
        output = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=criteria,
        )
        sequences = output if isinstance(output, Tensor) else output.sequences
        generated = sequences[:, width:].tolist()
        texts = [_decode(self.tokenizer, ids, eos_ids) for ids in generated]
        if self.stop is not None:
            texts = [text.split(self.stop, 1)[0] for text in texts]
        if greedy:
            return [[text] * self.num_samples for text in texts]
        return [texts[k : k + rows_per_prompt] for k in range(0, len(texts), rows_per_prompt)]


class _SeededSampling(LogitsProcessor):
    """Temperature + top-p sampling of each row from its own counter-based random stream.

    Row ``r``'s uniform at generation step ``t`` is ``hash(keys[r], t)``, with ``t`` the number of
    tokens generated so far (the length of ``input_ids`` minus the padded prompt width), so the
    draw is the same whatever the batch. Returns logits that are 0 at the drawn token and
    ``-inf`` elsewhere, for ``generate`` to pick greedily.
    """

    def __init__(self, keys: Sequence[int], temperature: float, top_p: float, *, prompt_width: int) -> None:
        self.keys = list(keys)
        self._keys = np.array(self.keys, dtype=np.uint64)
        self.temperature = temperature
        self.top_p = top_p
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.keys):
            raise RuntimeError(
                f"generate() passed {scores.shape[0]} rows to the seeded sampler, expected {len(self.keys)}; the "
                "per-row random streams need every row at every step (no beam search, no dropped rows)."
            )
        step = input_ids.shape[1] - self.prompt_width
        uniforms = torch.from_numpy(_uniforms(self._keys, step))
        tokens = _sample_top_p(scores, self.temperature, self.top_p, uniforms.to(scores.device))
        chosen = torch.full_like(scores, -math.inf)
        chosen.scatter_(1, tokens[:, None], 0.0)
        return chosen  # type: ignore[return-value]  # a FloatTensor at runtime


def _sample_top_p(scores: Tensor, temperature: float, top_p: float, uniforms: Tensor) -> Tensor:
    """Draw one token per row by inverse CDF over its top-p nucleus at ``temperature``.

    ``uniforms`` holds one number in ``[0, 1)`` per row. The nucleus is the smallest set of most
    probable tokens whose probability reaches ``top_p`` (the most probable token always in it).
    """
    probs = torch.softmax(scores.float() / temperature, dim=-1)
    sorted_probs, sorted_ids = torch.sort(probs, dim=-1, descending=True, stable=True)
    sorted_probs = sorted_probs.double()
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep = mass_before < top_p
    cdf = (sorted_probs * keep).cumsum(dim=-1)
    threshold = uniforms[:, None] * cdf[:, -1:]
    position = torch.searchsorted(cdf, threshold, right=True)
    position = torch.minimum(position, keep.sum(dim=-1, keepdim=True) - 1)
    return sorted_ids.gather(1, position).squeeze(1)


class _StopString(StoppingCriteria):
    """Finish a row once its decoded completion contains ``stop`` (works for multi-token stops).

    A full decode of a row's generated ids (exactly as the completion is finally decoded) runs
    only when its newest token is a *trigger*: a token whose text on its own contains the stop
    string's last character, decodes to nothing, or holds a partial character (U+FFFD). Other
    steps cost a few tensor operations for the whole batch, not a decode per row: the stop
    string can only be completed by a token that writes its last character. Missing a stop here
    would only make a row run longer (completions are cut before ``stop`` anyway, and a row's
    random stream does not depend on when it stops); a row is never stopped before its decoded
    text contains ``stop``.
    """

    def __init__(
        self,
        tokenizer: Any,
        stop: str,
        eos_ids: Sequence[int],
        *,
        prompt_width: int,
        rows: int,
        triggers: Tensor | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.eos_ids = eos_ids
        self.prompt_width = prompt_width
        self.triggers = _trigger_tokens(tokenizer, stop) if triggers is None else triggers
        self.done = torch.zeros(rows, dtype=torch.bool)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if input_ids.shape[1] <= self.prompt_width:
            return self.done.to(input_ids.device)  # type: ignore[return-value]  # a BoolTensor at runtime
        last = input_ids[:, -1].cpu()
        # Rows that reached EOS are finished by generate itself; only the others need checking.
        if self.eos_ids:
            self.done |= torch.isin(last, torch.tensor(list(self.eos_ids), dtype=last.dtype))
        known = last < self.triggers.numel()
        trigger = ~known  # ids beyond the tokenizer's vocabulary: check them the slow way
        trigger[known] = self.triggers[last[known]]
        check = (trigger & ~self.done).nonzero().flatten().tolist()
        if check:
            generated = input_ids[check, self.prompt_width :].tolist()
            texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
            for row, text in zip(check, texts, strict=True):
                self.done[row] = self.stop in text
        return self.done.to(input_ids.device)  # type: ignore[return-value]  # a BoolTensor at runtime


_TRIGGER_CACHE: dict[tuple[int, int, str], tuple[Any, Tensor]] = {}


def _trigger_tokens(tokenizer: Any, stop: str) -> Tensor:
    """``[vocab]`` bool: the tokens after which the stop check decodes the row (see :class:`_StopString`).

    A token triggers when its text alone contains ``stop[-1]``, is empty (special tokens, pieces
    that only make sense joined) or contains U+FFFD (a byte of a multi-byte character). Cached
    per tokenizer object, its size and the stop string.
    """
    size = len(tokenizer)
    key = (id(tokenizer), size, stop)
    cached = _TRIGGER_CACHE.get(key)
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    pieces = tokenizer.batch_decode([[token] for token in range(size)], skip_special_tokens=True)
    last = stop[-1]
    flags = torch.tensor([not piece or last in piece or "\ufffd" in piece for piece in pieces], dtype=torch.bool)
    if len(_TRIGGER_CACHE) >= 8:
        _TRIGGER_CACHE.clear()
    _TRIGGER_CACHE[key] = (tokenizer, flags)
    return flags


def _generation_config(max_new_tokens: int, pad_id: int, eos_ids: Sequence[int]) -> GenerationConfig:
    """Build a fresh greedy config, neutral where the model's ``generation_config`` would fill in."""
    return GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        num_return_sequences=1,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=list(eos_ids) or None,
        # Sampling knobs at their neutral values (sampling is ours; avoids "unused flag" warnings).
        temperature=1.0,
        top_p=1.0,
        top_k=50,
        typical_p=1.0,
        # Score-altering processors off, whatever the model's own generation_config says.
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0,
        min_length=0,
        renormalize_logits=False,
        remove_invalid_values=False,
        output_scores=False,
        return_dict_in_generate=False,
    )


def _decode(tokenizer: Any, ids: list[int], eos_ids: Sequence[int]) -> str:
    """Decode generated ids up to (excluding) the first end-of-sequence token, without special tokens."""
    end = next((position for position, token in enumerate(ids) if token in eos_ids), len(ids))
    text: str = tokenizer.decode(ids[:end], skip_special_tokens=True)
    return text


def _eos_ids(tokenizer: Any, model: Any) -> list[int]:
    """Return the end-of-sequence ids: the tokenizer's EOS, then those of the model's ``generation_config``."""
    ids: list[int] = []
    candidates = [
        getattr(tokenizer, "eos_token_id", None),
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ]
    for value in candidates:
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(token, int) and not isinstance(token, bool) and token not in ids:
                ids.append(token)
    return ids


def _mix64(value: int) -> int:
    """SplitMix64 finalizer: a bijective, well-mixing map of 64-bit integers."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _mix64_array(values: np.ndarray) -> np.ndarray:
    """:func:`_mix64` of each element of a ``uint64`` array (numpy wraps ``uint64`` arithmetic mod 2**64)."""
    values = values + np.uint64(0x9E3779B97F4A7C15)
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray = values ^ (values >> np.uint64(31))
    return mixed


def _uniforms(keys: np.ndarray, step: int) -> np.ndarray:
    """:func:`_uniform` of each key of a ``uint64`` array at ``step``, as ``float64``: one vectorised pass."""
    mixed = _mix64_array(keys ^ np.uint64(_mix64(step & _MASK64)))
    uniforms: np.ndarray = (mixed >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return uniforms


def _row_key(seed: int, sample_index: int) -> int:
    """Return the random-stream key of sample ``sample_index`` of a prompt seeded with ``seed``."""
    return _mix64(_mix64(seed & _MASK64) ^ sample_index)


def _uniform(key: int, step: int) -> float:
    """Return a uniform number in ``[0, 1)`` (53 random bits) for ``step`` of the stream ``key``."""
    return (_mix64(key ^ _mix64(step)) >> 11) * 2.0**-53


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Put ``model`` in eval mode; restore every submodule's own training flag afterwards."""
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    flags = [module.training for module in modules]
    try:
        if modules:
            model.eval()
        yield
    finally:
        for module, flag in zip(modules, flags, strict=True):
            module.training = flag


def _generation_pad_id(tokenizer: Any) -> int:
    """Return the id to left-pad prompts with: the pad token, else the EOS token."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise ValueError(
        "The tokenizer has neither a pad token nor an EOS token, so prompts cannot be left-padded and generation "
        "cannot stop at EOS. Give it one (e.g. `tokenizer.add_special_tokens({'pad_token': '<pad>'})`)."
    )


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")


def _is_hf_model(model: Any) -> bool:
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def _accepts_argument(model: Any, name: str) -> bool:
    """Whether ``model(...)`` takes a keyword argument ``name`` (explicitly or via ``**kwargs``)."""
    try:
        parameters = inspect.signature(model.forward if isinstance(model, torch.nn.Module) else model).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _declares_argument(model: Any, name: str) -> bool:
    """Whether ``model.forward`` names the parameter ``name`` explicitly (not only via ``**kwargs``)."""
    try:
        return name in inspect.signature(model.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def _model_config(model: Any) -> Any:
    config = getattr(model, "config", None)
    get_text_config = getattr(config, "get_text_config", None)
    if callable(get_text_config):
        with contextlib.suppress(Exception):
            config = get_text_config()
    return config


def _max_positions(model: Any) -> int | None:
    """Return the model's maximum sequence length from its config, when it declares one."""
    config = _model_config(model)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _vocab_size(model: Any) -> int | None:
    get_embeddings = getattr(model, "get_input_embeddings", None)
    if callable(get_embeddings):
        with contextlib.suppress(Exception):
            embeddings = get_embeddings()
            if isinstance(embeddings, torch.nn.Embedding):
                return int(embeddings.num_embeddings)
    value = getattr(_model_config(model), "vocab_size", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _check_positions(model: Any, lengths: Sequence[int], *, what: str, hint: str) -> None:
    limit = _max_positions(model)
    if limit is None:
        return
    too_long = [(i, n) for i, n in enumerate(lengths) if n > limit]
    if too_long:
        shown = ", ".join(f"#{i}: {n}" for i, n in too_long[:5])
        more = f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
        raise ValueError(
            f"{len(too_long)} example(s) need more positions ({what}) than the model's maximum of {limit} "
            f"({shown}{more}). {hint}."
        )


def _check_vocab(model: Any, id_lists: Sequence[Sequence[int]]) -> None:
    vocab = _vocab_size(model)
    if vocab is None:
        return
    largest = max((max(ids) for ids in id_lists if ids), default=-1)
    if largest >= vocab:
        raise ValueError(
            f"Token id {largest} is out of range for the model's vocabulary of {vocab} embeddings; the tokenizer "
            "and the model do not match (resize the embeddings after adding tokens)."
        )


def _id_list(ids: Any, name: str) -> list[int]:
    """``ids`` (a sequence or 1-D tensor of ints) as a list of non-negative Python ints."""
    if isinstance(ids, Tensor):
        if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{name} must be a 1-D integer tensor, got shape {tuple(ids.shape)} and {ids.dtype}.")
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise TypeError(f"{name} must be a sequence of token ids, got {type(ids).__name__}.")
    out: list[int] = []
    for value in ids:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must hold ints, got {value!r} ({type(value).__name__}).")
        if value < 0:
            raise ValueError(f"{name} must be non-negative token ids, got {value}.")
        out.append(int(value))
    return out


def _check_int(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def _check_real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    return float(value)


def _logits(output: Any) -> Tensor:
    logits = output if isinstance(output, Tensor) else getattr(output, "logits", None)
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        raise TypeError(
            "The model must return logits [batch, length, vocab] (a tensor, or an output with a `logits` attribute); "
            f"got {type(output).__name__}."
        )
    return logits
