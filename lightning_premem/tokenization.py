r"""From an example to token ids: the prompt and target formats, their encoding, the tokenizers.

- :func:`format_example` turns an ``{id, question, solution}`` mapping into prompt and target text
  (the authors' formats by default: prompt ``question + "\nAnswer:"``, target
  ``" " + solution + "\nDone."``);
- :func:`encode_prompt_target` tokenizes both, each once, so the prompt/target boundary comes from the ids;
- :func:`pad_token_id` is the id every batch is padded with (the pad token, else EOS);
- :func:`load_tokenizer` resolves ``"char"``, a path or hub name, or a tokenizer object;
- :func:`char_tokenizer` is a character-level tokenizer that is a real Hugging Face tokenizer. Built from
  the ``tokenizers`` library (a BPE model with no merges is a character model), so it works wherever a
  Hugging Face tokenizer does: ``save_pretrained`` / ``AutoTokenizer.from_pretrained``, padding, special
  tokens, ``decode``. Used by the tests, the synthetic task and the CPU demo, where it needs no download.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from lightning_premem._checks import check_token_ids

__all__ = [
    "DEFAULT_ALPHABET",
    "DEFAULT_PROMPT_TEMPLATE",
    "DEFAULT_TARGET_TEMPLATE",
    "char_tokenizer",
    "encode_prompt_target",
    "format_example",
    "load_tokenizer",
    "pad_token_id",
]

#: The authors' prompt and target formats (Kang et al.): prompt ``question + "\nAnswer:"``,
#: target ``" " + solution + "\nDone."``.
DEFAULT_PROMPT_TEMPLATE = "{question}\nAnswer:"
DEFAULT_TARGET_TEMPLATE = " {solution}\nDone."

#: Letters, digits, punctuation, space and newline: enough for GSM8K-style text.
DEFAULT_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n"
_SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>"}


def char_tokenizer(alphabet: str = DEFAULT_ALPHABET, *, model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """Return a character-level Hugging Face tokenizer over ``alphabet``.

    Ids 0-3 are ``<pad>``, ``<unk>``, ``<bos>`` and ``<eos>``; each character of ``alphabet``
    follows in order; characters outside it encode as ``<unk>``. No special token is added on
    encoding, and ``decode`` concatenates characters.

    Example:
        >>> tok = char_tokenizer("ab +=")
        >>> tok("a+b")["input_ids"]
        [4, 7, 5]
        >>> tok.decode([4, 7, 5, 3], skip_special_tokens=True)
        'a+b'
        >>> tok.pad_token_id, tok.eos_token_id, len(tok)
        (0, 3, 9)
    """
    if not isinstance(alphabet, str) or not alphabet:
        raise ValueError(f"`alphabet` must be a non-empty string of characters, got {alphabet!r}.")
    repeated = sorted({c for c in alphabet if alphabet.count(c) > 1})
    if repeated:
        raise ValueError(f"`alphabet` must list each character once; repeated: {repeated!r}.")
    specials = list(_SPECIAL_TOKENS.values())
    vocab = {token: index for index, token in enumerate(specials + list(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=_SPECIAL_TOKENS["unk_token"]))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend, model_max_length=model_max_length, **_SPECIAL_TOKENS
    )


def format_example(
    example: Mapping[str, Any],
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    target_template: str = DEFAULT_TARGET_TEMPLATE,
) -> tuple[str, str]:
    r"""Return ``(prompt, target)`` text of an ``{id, question, solution}`` mapping.

    Example:
        >>> format_example({"id": 0, "question": "What is 2+3?", "solution": "2+3=5\n#### 5"})
        ('What is 2+3?\nAnswer:', ' 2+3=5\n#### 5\nDone.')
    """
    return prompt_template.format(**example), target_template.format(**example)


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
        >>> encode_prompt_target(char_tokenizer("ab+= "), "a+b=", " ab")
        ([4, 6, 5, 7], [8, 4, 5])
    """
    if not isinstance(prompt, str):
        raise TypeError(f"`prompt` must be a string, got {type(prompt).__name__}.")
    if not isinstance(target, str):
        raise TypeError(f"`target` must be a string, got {type(target).__name__}.")
    prompt_ids = check_token_ids(tokenizer(prompt)["input_ids"], "prompt ids")
    target_ids = check_token_ids(tokenizer(target, add_special_tokens=False)["input_ids"], "target ids")
    if not prompt_ids:
        raise ValueError(
            f"The prompt {prompt[:50]!r} encodes to no tokens; the target's perplexity needs at least one prompt "
            "token to condition on. Use a non-empty prompt (or a tokenizer that adds a BOS token)."
        )
    if not target_ids:
        raise ValueError(f"The target {target[:50]!r} encodes to no tokens; every example needs a non-empty target.")
    return prompt_ids, target_ids


def pad_token_id(tokenizer: Any) -> int:
    """Return the id batches are padded with: the tokenizer's pad token, else its EOS token.

    Example:
        >>> pad_token_id(char_tokenizer())
        0
    """
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise ValueError(
        "The tokenizer has neither a pad token nor an EOS token, so prompts cannot be left-padded and generation "
        "cannot stop at EOS. Give it one (e.g. `tokenizer.add_special_tokens({'pad_token': '<pad>'})`)."
    )


def load_tokenizer(tokenizer: Any) -> Any:
    """Resolve a tokenizer argument: ``"char"`` (:func:`char_tokenizer`), a path or hub name, or a tokenizer."""
    if isinstance(tokenizer, str):
        if tokenizer == "char":
            return char_tokenizer()
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(tokenizer)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"cannot load a tokenizer from {tokenizer!r} ({err}). Pass 'char' for the built-in character "
                "tokenizer, a local folder holding a saved tokenizer, a hub name on a machine that can reach the hub, "
                "or a tokenizer object."
            ) from None
    if not callable(tokenizer) or not callable(getattr(tokenizer, "decode", None)):
        raise TypeError(
            f"`tokenizer` must be 'char', a path or hub name, or a Hugging Face tokenizer, "
            f"got {type(tokenizer).__name__}."
        )
    return tokenizer
