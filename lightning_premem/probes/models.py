"""What the probes need to know about a model: its device, config limits, signature, outputs.

Works for Hugging Face causal LMs and for plain ``torch.nn.Module`` language models alike; every
look-up that a model may not support returns ``None`` (or ``False``) instead of raising.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "accepts_argument",
    "check_positions",
    "check_vocab",
    "declares_argument",
    "eval_mode",
    "hidden_size",
    "is_hf_model",
    "logits_of",
    "max_positions",
    "model_device",
    "split_head",
    "vocab_size",
]


#: Config fields of models whose logits are more than ``head(last hidden state)``.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
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


def model_device(model: Any) -> torch.device:
    """Return the device of the model's parameters (its ``device`` attribute first; CPU without parameters)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")


def is_hf_model(model: Any) -> bool:
    """Whether ``model`` is a Hugging Face ``PreTrainedModel``."""
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def accepts_argument(model: Any, name: str) -> bool:
    """Whether ``model(...)`` takes a keyword argument ``name`` (explicitly or via ``**kwargs``)."""
    try:
        parameters = inspect.signature(model.forward if isinstance(model, torch.nn.Module) else model).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def declares_argument(model: Any, name: str) -> bool:
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


def _config_int(model: Any, names: Sequence[str]) -> int | None:
    config = _model_config(model)
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def max_positions(model: Any) -> int | None:
    """Return the model's maximum sequence length from its config, when it declares one."""
    return _config_int(model, ("max_position_embeddings", "n_positions"))


def hidden_size(model: Any) -> int | None:
    """Return the width of the model's hidden states from its config, when it declares one."""
    return _config_int(model, ("hidden_size", "n_embd", "d_model"))


def split_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """Return ``(body, head)`` of a Hugging Face causal LM, or None when it has no separate output layer.

    ``body(input_ids=...)`` returns the last hidden states and ``head`` maps them to logits, as the
    model's own forward does for the models whose logits are ``head(last hidden state)`` (GPT-2, Llama,
    Mistral, Qwen, SmolLM, ...). Models whose config declares a post-processing of the logits (Gemma's
    soft-capping, Cohere's and Granite's scaling) get None; for any other the caller checks the split
    against the model's own forward once.
    """
    if not is_hf_model(model):
        return None
    config = _model_config(model)
    for name in _LOGIT_POSTPROCESSING:
        value = getattr(config, name, None)
        if value is not None and value != 1:
            return None
    head = model.get_output_embeddings()
    body = getattr(model, "base_model", None)
    if not isinstance(head, torch.nn.Module) or not isinstance(body, torch.nn.Module) or body is model:
        return None
    return body, head


def vocab_size(model: Any) -> int | None:
    """Return the number of input embeddings (else the config's ``vocab_size``), or None when unknown."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    if callable(get_embeddings):
        with contextlib.suppress(Exception):
            embeddings = get_embeddings()
            if isinstance(embeddings, torch.nn.Embedding):
                return int(embeddings.num_embeddings)
    value = getattr(_model_config(model), "vocab_size", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def check_positions(model: Any, lengths: Sequence[int], *, what: str, hint: str) -> None:
    """Raise ``ValueError`` naming the sequences longer than the model's maximum positions."""
    limit = max_positions(model)
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


def check_vocab(model: Any, id_lists: Sequence[Sequence[int]]) -> None:
    """Raise ``ValueError`` when a token id is beyond the model's embeddings (tokenizer and model differ)."""
    vocab = vocab_size(model)
    if vocab is None:
        return
    largest = max((max(ids) for ids in id_lists if ids), default=-1)
    if largest >= vocab:
        raise ValueError(
            f"Token id {largest} is out of range for the model's vocabulary of {vocab} embeddings; the tokenizer "
            "and the model do not match (resize the embeddings after adding tokens)."
        )


def logits_of(output: Any) -> Tensor:
    """Return the ``[batch, length, vocab]`` logits of a model output (a tensor or an object with ``logits``)."""
    logits = output if isinstance(output, Tensor) else getattr(output, "logits", None)
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        raise TypeError(
            "The model must return logits [batch, length, vocab] (a tensor, or an output with a `logits` attribute); "
            f"got {type(output).__name__}."
        )
    return logits
