"""AlpacaEval 2.0's length-controlled win rate, refitted locally.

AlpacaEval's model (arXiv 2404.04475; `alpaca_eval/metrics/glm_winrate.py`)
is a logistic regression of the preference on tanh of the standardised
length difference, an instruction-difficulty term and a baseline term,
fitted on soft labels; the LC win rate is the mean prediction with the
length term set to 0. Its code cannot run offline: `get_length_controlled_winrate`
always downloads `df_gamed.csv` (difficulty and gamed baselines) from the
Hugging Face hub, even for its `length_controlled_minimal` formula, and
importing any of alpaca_eval imports the whole package (datasets,
tiktoken, huggingface_hub, a `.env` read at import). So this module fits
that `length_controlled_minimal` model itself:

    P(model better) = sigmoid(theta * tanh(delta_len / sd(delta_len)) + beta)

delta_len = model's characters minus the reference's, per item; fitted by
Newton's method on the soft-label log-loss, with a tiny ridge (1e-3) so a
sample that is all wins or all losses stays finite. LC win rate =
sigmoid(beta). The difficulty term is dropped: it is estimated upstream
across hundreds of leaderboard models and is not shipped; from one model's
items it is not identifiable.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

RIDGE = 1e-3
ITERATIONS = 50


@dataclass(frozen=True)
class LengthFit:
    lc_win_rate: float  # in [0, 1]
    theta: float  # the length coefficient
    beta: float


def fit(preferences: Sequence[float], model_chars: Sequence[int], reference_chars: Sequence[int]) -> LengthFit | None:
    """The fitted model over items with a preference; None without any."""
    if not preferences:
        return None
    deltas = [m - r for m, r in zip(model_chars, reference_chars, strict=True)]
    sd = statistics.pstdev(deltas) if len(deltas) > 1 else 0.0
    xs = [math.tanh(d / sd) if sd > 0 else 0.0 for d in deltas]
    theta = beta = 0.0
    for _ in range(ITERATIONS):
        g_t, g_b = RIDGE * theta, RIDGE * beta
        h_tt, h_tb, h_bb = RIDGE, 0.0, RIDGE
        for x, y in zip(xs, preferences, strict=True):
            p = _sigmoid(theta * x + beta)
            g_t += (p - y) * x
            g_b += p - y
            w = p * (1 - p)
            h_tt, h_tb, h_bb = h_tt + w * x * x, h_tb + w * x, h_bb + w
        det = h_tt * h_bb - h_tb * h_tb
        if det <= 0:
            break
        step_t = (h_bb * g_t - h_tb * g_b) / det
        step_b = (h_tt * g_b - h_tb * g_t) / det
        theta, beta = theta - step_t, beta - step_b
        if abs(step_t) < 1e-10 and abs(step_b) < 1e-10:
            break
    return LengthFit(_sigmoid(beta), theta, beta)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1 / (1 + math.exp(-z))
    e = math.exp(z)
    return e / (1 + e)
