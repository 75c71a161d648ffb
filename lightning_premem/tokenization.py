"""A character-level tokenizer that is a real Hugging Face tokenizer.

Built from the ``tokenizers`` library (a BPE model with no merges is a character model), so it
works wherever a Hugging Face tokenizer does: ``save_pretrained`` / ``AutoTokenizer.from_pretrained``,
padding, special tokens, ``decode``. Used by the tests, the synthetic task and the CPU demo,
where it needs no download.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

__all__ = ["DEFAULT_ALPHABET", "char_tokenizer"]

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
