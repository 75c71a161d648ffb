"""Analysis of saved runs: replay, generalization predictors, threshold calibration, robustness, plots.

- :func:`replay` (:mod:`.replay`): per-checkpoint values and R² from saved per-example histories;
- :func:`build_report`, :func:`write_report`, :func:`predictor_table` (:mod:`.report`): ``premem report``;
- :func:`calibrate_threshold`, :func:`split_runs` (:mod:`.calibration`): the threshold without test leakage;
- :func:`spearman` (:mod:`.statistics`); the figures (:mod:`.plots`).
"""

from lightning_premem.analysis.calibration import DEFAULT_CANDIDATES, Calibration, calibrate_threshold, split_runs
from lightning_premem.analysis.replay import replay
from lightning_premem.analysis.report import PREDICTORS, build_report, predictor_table, write_report
from lightning_premem.analysis.statistics import spearman

__all__ = [
    "DEFAULT_CANDIDATES",
    "PREDICTORS",
    "Calibration",
    "build_report",
    "calibrate_threshold",
    "predictor_table",
    "replay",
    "spearman",
    "split_runs",
    "write_report",
]
