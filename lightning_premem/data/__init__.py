"""Reasoning data for Lightning: the datamodules, their sources and batches, curation, the synthetic task.

- :class:`ReasoningDataModule` (:mod:`.datamodule`): GSM8K / MATH / your own question-solution data from
  files, a ``datasets.Dataset``, a list of dicts or the hub (:mod:`.sources`), tokenized and batched with
  example ids (:mod:`.batching`);
- :class:`CuratedDataModule`, :func:`sampling_weights`, :func:`select_for_acquisition` (:mod:`.curation`):
  active learning by pre-memorization accuracy;
- :class:`ArithmeticTask` (:mod:`.synthetic`, skills in :mod:`.templates`): seeded arithmetic problems with
  randomly phrased GSM8K-style traces.
"""

from lightning_premem.data.curation import STRATEGIES, CuratedDataModule, sampling_weights, select_for_acquisition
from lightning_premem.data.datamodule import FIELD_LAYOUTS, INVALID_REASONS, SPLITS, ReasoningDataModule
from lightning_premem.data.synthetic import ArithmeticTask
from lightning_premem.data.templates import DEFAULT_TEMPLATES, TEMPLATES

__all__ = [
    "DEFAULT_TEMPLATES",
    "FIELD_LAYOUTS",
    "INVALID_REASONS",
    "SPLITS",
    "STRATEGIES",
    "TEMPLATES",
    "ArithmeticTask",
    "CuratedDataModule",
    "ReasoningDataModule",
    "sampling_weights",
    "select_for_acquisition",
]
