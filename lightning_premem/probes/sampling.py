r"""The generation probe: sampled completions of the training queries, seeded per example.

The paper samples ``k`` completions per query (``k = 5``, temperature 0.8, top-p 0.95, stop at
``"\nDone."``): :class:`SamplingConfig` holds these settings, and :class:`HFSampler` samples with
Hugging Face ``model.generate``. Sampling is seeded *per example* (:mod:`lightning_premem.probes.seeds`):
the completions of a prompt depend only on the prompt and its seed, not on which other prompts share
its batch, on the batch size, or on the rank that samples it. Any other engine plugs in as a
:class:`~lightning_premem.protocols.CompletionSampler`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from lightning_premem._checks import check_int, check_real, check_token_ids
from lightning_premem.probes.models import check_positions, check_vocab, eval_mode, model_device
from lightning_premem.probes.seeds import row_key, uniforms
from lightning_premem.tokenization import pad_token_id

__all__ = ["DEFAULT_STOP", "HFSampler", "SamplingConfig"]

#: The paper's stop string: targets end with ``"\nDone."``, and sampling stops there.
DEFAULT_STOP = "\nDone."


@dataclass(frozen=True)
class SamplingConfig:
    r"""How the probes sample completions: the paper's settings by default (Kang et al.).

    One object for every probe that samples (the two callbacks, the experiment configs); validated once,
    at construction.

    Example:
        >>> SamplingConfig(num_samples=4, max_new_tokens=48)
        SamplingConfig(num_samples=4, temperature=0.8, top_p=0.95, max_new_tokens=48, stop='\nDone.', batch_size=16)
        >>> SamplingConfig(top_p=0)
        Traceback (most recent call last):
        ...
        ValueError: `top_p` must be in (0, 1] (1 disables nucleus sampling), got 0.
    """

    num_samples: int = 5
    """Completions sampled per query (the paper: 5)."""
    temperature: float = 0.8
    """Softmax temperature, ``>= 0`` (the paper: 0.8); 0 is greedy decoding."""
    top_p: float = 0.95
    """Nucleus sampling mass in ``(0, 1]`` (the paper: 0.95); 1 disables it."""
    max_new_tokens: int = 256
    """Longest completion, in tokens."""
    stop: str | None = DEFAULT_STOP
    """Generation stops once the completion contains this string (None: only at EOS or the length limit)."""
    batch_size: int = 16
    """Prompts per generation call (each expands to ``num_samples`` rows)."""

    def __post_init__(self) -> None:
        check_int(self.num_samples, "num_samples", minimum=1)
        check_int(self.max_new_tokens, "max_new_tokens", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=1)
        if check_real(self.temperature, "temperature") < 0:
            raise ValueError(f"`temperature` must be >= 0 (0 means greedy decoding), got {self.temperature!r}.")
        if not 0 < check_real(self.top_p, "top_p") <= 1:
            raise ValueError(f"`top_p` must be in (0, 1] (1 disables nucleus sampling), got {self.top_p!r}.")
        if self.stop is not None and (not isinstance(self.stop, str) or not self.stop):
            raise ValueError(f"`stop` must be a non-empty string or None, got {self.stop!r}.")

    def as_dict(self) -> dict[str, Any]:
        """Return the settings as a plain mapping (the keyword arguments of :class:`HFSampler`)."""
        return asdict(self)


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
        _ = self.config  # validates the settings (plain attributes: they may have changed since)
        pad_token_id(tokenizer)

    @classmethod
    def from_config(cls, model: Any, tokenizer: Any, config: SamplingConfig) -> HFSampler:
        """Build a sampler with the settings of a :class:`SamplingConfig`."""
        return cls(model, tokenizer, **config.as_dict())

    @property
    def config(self) -> SamplingConfig:
        """Return the current settings, validated."""
        return SamplingConfig(
            num_samples=self.num_samples,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            stop=self.stop,
            batch_size=self.batch_size,
        )

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
                :func:`~lightning_premem.tokenization.encode_prompt_target`).
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
        _ = self.config  # validates the settings (plain attributes: they may have changed since)
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
        pad_id = pad_token_id(self.tokenizer)
        encoded = [
            check_token_ids(self.tokenizer(prompt)["input_ids"], f"prompts[{i}] ids")
            for i, prompt in enumerate(prompts)
        ]
        for index, ids in enumerate(encoded):
            if not ids:
                raise ValueError(
                    f"prompts[{index}] = {prompts[index][:50]!r} encodes to no tokens; nothing to continue."
                )
        check_positions(
            self.model,
            [len(ids) + self.max_new_tokens for ids in encoded],
            what="prompt + max_new_tokens",
            hint="Lower `max_new_tokens` or shorten these prompts",
        )
        check_vocab(self.model, encoded)

        results: list[list[str]] = [[] for _ in prompts]
        if not prompts:
            return results
        # Completions do not depend on the batch, so group prompts of similar length to pad less.
        order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
        with eval_mode(self.model), torch.inference_mode():
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
        keys = [row_key(seeds[i], j) for i in chunk for j in range(rows_per_prompt)]
        width = max(len(ids) for ids in row_ids)
        input_ids = torch.full((len(row_ids), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(row_ids), width), dtype=torch.long)
        for row, ids in enumerate(row_ids):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        device = model_device(self.model)

        eos_ids = _eos_ids(self.tokenizer, self.model)
        processors = LogitsProcessorList()
        if not greedy:
            processors.append(_SeededSampling(keys, float(self.temperature), float(self.top_p), prompt_width=width))
        criteria = StoppingCriteriaList()
        if self.stop is not None:
            criteria.append(_StopString(self.tokenizer, self.stop, eos_ids, prompt_width=width, rows=len(row_ids)))
        config = _generation_config(self.max_new_tokens, pad_id, eos_ids)
        with _no_padding_warning():
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
        draws = torch.from_numpy(uniforms(self._keys, step))
        tokens = _sample_top_p(scores, self.temperature, self.top_p, draws.to(scores.device))
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


class _DropPaddingWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "strongly recommend passing in an `attention_mask`" not in record.getMessage()


@contextlib.contextmanager
def _no_padding_warning() -> Iterator[None]:
    """Silence transformers' "passing in an attention_mask" warning around our own ``generate`` calls.

    ``generate`` gets the attention mask of the left-padded prompts; transformers drops an all-ones mask
    and then warns when a finished row is padded after its EOS, which needs no mask (the row is done).
    """
    logger = logging.getLogger("transformers.modeling_utils")
    dropped = _DropPaddingWarning()
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)


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
