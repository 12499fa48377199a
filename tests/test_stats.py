import math

import pandas as pd
import pytest

from qatstudy.stats import mean_ci, mean_ci_text, per_fp32_seed, t_critical


def test_t_critical_matches_students_t():
    assert t_critical(1) == 12.706 and t_critical(2) == 4.303 and t_critical(30) == 2.042
    assert t_critical(40) == pytest.approx(2.021, abs=0.001)  # the expansion beyond the table
    assert t_critical(10_000) == pytest.approx(1.960, abs=0.001)
    with pytest.raises(ValueError, match="degree of freedom"):
        t_critical(0)


def test_mean_ci_is_the_t_interval():
    mean, half, n = mean_ci(pd.Series([1.0, 2.0, 3.0, None]))
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    single = mean_ci(pd.Series([5.0]))
    assert single[0] == 5.0 and math.isnan(single[1]) and single[2] == 1
    assert mean_ci_text(pd.Series([1.0, 2.0, 3.0]), ".2f") == "2.00 ± 2.48 (n=3)"
    assert mean_ci_text(pd.Series([5.0]), ".1f") == "5.0" and mean_ci_text(pd.Series([], dtype=float), ".1f") == "–"


def test_qat_seeds_are_averaged_within_their_fp32_seed():
    runs = pd.DataFrame({"seed": [0, 0, 1, 1, 2], "qat_seed": [0, 1, 0, 1, 0], "top1": [80, 82, 70, 74, 90]})
    assert per_fp32_seed(runs, "top1").tolist() == [81, 72, 90]
    assert mean_ci(per_fp32_seed(runs, "top1"))[2] == 3  # n counts FP32 models, not QAT runs
