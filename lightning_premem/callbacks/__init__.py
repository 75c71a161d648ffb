"""The Lightning callbacks: pre-memorization accuracy, and the baseline predictors to compare it with.

- :class:`PreMemorizationCallback` (:mod:`.premem`): probes the training queries at epoch ends, logs
  ``premem/`` curves and writes the per-example history;
- :class:`BaselinePredictorsCallback` (:mod:`.predictors`): gradient variance, distance from
  initialisation, ATC and the epoch's train loss at the same rounds;
- :mod:`.common`: how both find the model, the tokenizer and the examples, and resolve their sampling.
"""

from lightning_premem.callbacks.predictors import BaselinePredictorsCallback
from lightning_premem.callbacks.premem import PreMemorizationCallback

__all__ = ["BaselinePredictorsCallback", "PreMemorizationCallback"]
