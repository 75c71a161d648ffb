"""Independent, deliberately naive references the tests compare against."""

import math


def premem_loop(accuracy, perplexity, threshold):
    """Pre-memorization accuracy by the definition, one example and checkpoint at a time."""
    num_checkpoints, num_examples = len(accuracy), len(accuracy[0])
    out = [[0.0] * num_examples for _ in range(num_checkpoints)]
    for i in range(num_examples):
        best = 0.0
        for t in range(num_checkpoints):
            masked = accuracy[t][i] if perplexity[t][i] > threshold else 0.0
            best = max(best, masked)
            out[t][i] = min(best, accuracy[t][i])
    return out


def r2_normal_equations(x, y):
    """R² = 1 - SS_res / SS_tot of the least-squares line, solved by hand."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum((a - mx) ** 2 for a in x)
    intercept = my - slope * mx
    ss_res = sum((b - (intercept + slope * a)) ** 2 for a, b in zip(x, y, strict=True))
    ss_tot = sum((b - my) ** 2 for b in y)
    return 1 - ss_res / ss_tot if ss_tot else math.nan
