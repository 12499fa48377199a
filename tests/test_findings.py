import pandas as pd
import pytest

from qatstudy.findings import findings_markdown, findings_table, seed_drops
from qatstudy.stats import t_critical, welch_ci


def _accuracy() -> pd.DataFrame:
    rows = []
    for model, family, fp32, drops in (("r", "cnn", [90, 91, 92], [1.0, 2.0, 3.0]),
                                       ("v", "vit", [88, 88, 88], [5.0, 6.0, 7.0])):
        for seed, (top1, drop) in enumerate(zip(fp32, drops)):
            rows.append(dict(model=model, family=family, method="fp32", w_bits=32, a_bits=32, seed=seed, qat_seed=None,
                             top1=top1))
            for q, jitter in ((0, -0.5), (1, 0.5)):  # two QAT seeds around the seed's drop
                rows.append(dict(model=model, family=family, method="qat", w_bits=4, a_bits=4, seed=seed, qat_seed=q,
                                 top1=top1 - drop + jitter))
            rows.append(dict(model=model, family=family, method="ptq", w_bits=4, a_bits=4, seed=seed, qat_seed=0,
                             top1=top1 - drop - 10))
    return pd.DataFrame(rows)


def test_drops_are_per_fp32_seed_from_its_own_fp32_model():
    drops = seed_drops(_accuracy(), "qat")
    assert drops[drops.model == "r"]["top1_drop"].tolist() == [1.0, 2.0, 3.0]  # QAT seeds averaged, own FP32 subtracted


def test_findings_rows_carry_effect_interval_n_and_shown():
    table = findings_table(_accuracy()).set_index(["claim", "subject"])
    r = table.loc[("qat_drop_from_fp32", "r")]
    assert (r.effect, r.n) == (2.0, 3) and r.ci_high - r.effect == pytest.approx(t_critical(2) * 1.0 / 3 ** 0.5)
    assert not r.shown  # 2 ± 2.48 holds zero
    gain = table.loc[("qat_minus_ptq", "r")]
    assert (gain.effect, gain.ci_low, gain.ci_high, gain.n, gain.shown) == (10.0, 10.0, 10.0, 3, True)
    gap = table.loc[("vit_minus_cnn_qat_drop", "vit - cnn")]
    assert gap.effect == pytest.approx(4.0) and gap.n == 6 and gap.shown
    assert "| vit_minus_cnn_qat_drop | vit - cnn | W4A4 | +4.00 |" in findings_markdown(findings_table(_accuracy()))


def test_an_interval_holding_zero_is_not_shown():
    effect, low, high, n = welch_ci(pd.Series([1.0, -1.0, 2.0]), pd.Series([0.0, 1.0, 0.5]))
    assert low < 0 < high and n == 6
    accuracy = _accuracy()
    accuracy.loc[(accuracy.model == "v") & (accuracy.method == "qat"), "top1"] = (
        accuracy.loc[(accuracy.model == "r") & (accuracy.method == "qat"), "top1"].to_numpy() - 4 + [0, 0, 3, -3, 1, -1])
    gap = findings_table(accuracy).set_index(["claim", "subject"]).loc[("vit_minus_cnn_qat_drop", "vit - cnn")]
    assert gap.ci_low < 0 < gap.ci_high and not gap.shown
