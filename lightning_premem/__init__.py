"""lightning-premem: pre-memorization train accuracy for PyTorch Lightning.

Kang et al., "What Do Learning Dynamics Reveal About Generalization in LLM Reasoning?"
(arXiv 2411.07681): the accuracy of a model's sampled answers on its own training
questions, counted only before it reproduces the target trace verbatim, predicts test
accuracy.
"""

from lightning_premem.callbacks import PreMemorizationCallback
from lightning_premem.data import CuratedDataModule, ReasoningDataModule
from lightning_premem.metric import PreMemorizationAccuracy
from lightning_premem.module import CausalLMModule

__all__ = [
    "CausalLMModule",
    "CuratedDataModule",
    "PreMemorizationAccuracy",
    "PreMemorizationCallback",
    "ReasoningDataModule",
]
__version__ = "0.1.0.dev0"
