"""Verdict words from stated rules over a claim's numbers (never typed by hand).

A claim of a paper is a direction ("the fine-tuned model is *less* robust than the
standard one") on a measure. The book's verdict on it follows from the estimate of
the difference, its 95% interval and a paired test (:mod:`nbs_lib.methods.statistics`):

* **not testable**: the premise of the claim fails, or the measure saturates on both
  sides (no difference could show);
* **reproduced**: the paired test rejects "no difference" at 5% and the difference has
  the paper's sign;
* **opposite**: the paired test rejects "no difference" at 5% and the difference has
  the other sign;
* **no clear difference**: otherwise (the interval contains 0).
"""

from __future__ import annotations

import math

ALPHA = 0.05
VERDICTS = ("reproduced", "opposite", "no clear difference", "not testable")
RULES = (
    "not testable: the claim's premise fails, or both sides saturate",
    "reproduced: paired test p < 0.05 and the difference has the paper's sign",
    "opposite: paired test p < 0.05 and the difference has the other sign",
    "no clear difference: otherwise",
)


def verdict(expected: str, difference: float, p: float, testable: bool = True, alpha: float = ALPHA) -> str:
    """The verdict word of a claim whose paper direction is ``expected`` ("higher" or "lower").

    ``difference`` is ours, as "A minus B" of the claim "A is ``expected`` than B"; ``p`` is
    the paired test's two-sided p-value. See the module docstring for the rules.
    """
    if expected not in ("higher", "lower"):
        raise ValueError(f"expected must be 'higher' or 'lower'; got {expected!r}")
    if not testable or math.isnan(difference) or math.isnan(p):
        return "not testable"
    if p >= alpha or difference == 0:
        return "no clear difference"
    agrees = difference > 0 if expected == "higher" else difference < 0
    return "reproduced" if agrees else "opposite"


def tally(verdicts) -> str:
    """``"3 of 4 reproduced (1 no clear difference)"``: a verdict column in words."""
    verdicts = list(verdicts)
    counts = {v: verdicts.count(v) for v in VERDICTS if v in verdicts}
    others = ", ".join(f"{n} {v}" for v, n in counts.items() if v != "reproduced")
    head = f"{counts.get('reproduced', 0)} of {len(verdicts)} reproduced"
    return f"{head} ({others})" if others else head


def count_verdict(agreeing: int, total: int) -> str:
    """The verdict of a claim counted over curves or targets: every one agrees -> reproduced,
    some -> partly, none -> no; nothing to count -> not testable (the second work, chapter 7)."""
    if total == 0:
        return "not testable"
    return "reproduced" if agreeing == total else "partly" if agreeing > 0 else "no"
