import re
from pathlib import Path

import pandas as pd
import pytest

from qatstudy.findings import ablation_findings, findings_markdown, findings_table, seed_drops
from qatstudy.stats import t_critical, welch_ci


def _accuracy() -> pd.DataFrame:
    rows = []
    for model, family, fp32, drops in (
        ("r", "cnn", [90, 91, 92], [1.0, 2.0, 3.0]),
        ("v", "vit", [88, 88, 88], [5.0, 6.0, 7.0]),
    ):
        for seed, (top1, drop) in enumerate(zip(fp32, drops)):
            rows.append(
                dict(
                    model=model, family=family, method="fp32", w_bits=32, a_bits=32, seed=seed, qat_seed=None, top1=top1
                )
            )
            for q, jitter in ((0, -0.5), (1, 0.5)):  # two QAT seeds around the seed's drop
                rows.append(
                    dict(
                        model=model,
                        family=family,
                        method="qat",
                        w_bits=4,
                        a_bits=4,
                        seed=seed,
                        qat_seed=q,
                        top1=top1 - drop + jitter,
                    )
                )
            rows.append(
                dict(
                    model=model,
                    family=family,
                    method="ptq",
                    w_bits=4,
                    a_bits=4,
                    seed=seed,
                    qat_seed=0,
                    top1=top1 - drop - 10,
                )
            )
    return pd.DataFrame(rows)


def test_drops_are_per_fp32_seed_from_its_own_fp32_model():
    drops = seed_drops(_accuracy(), "qat")
    assert drops[drops.model == "r"]["top1_drop"].tolist() == [1.0, 2.0, 3.0]  # QAT seeds averaged, own FP32 subtracted


def test_findings_rows_carry_effect_interval_n_and_shown():
    table = findings_table(_accuracy()).set_index(["claim", "subject"])
    r = table.loc[("qat_drop_from_fp32", "r")]
    assert (r.effect, r.n) == (2.0, 3) and r.ci_high - r.effect == pytest.approx(t_critical(2) * 1.0 / 3**0.5)
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
        accuracy.loc[(accuracy.model == "r") & (accuracy.method == "qat"), "top1"].to_numpy() - 4 + [0, 0, 3, -3, 1, -1]
    )
    gap = findings_table(accuracy).set_index(["claim", "subject"]).loc[("vit_minus_cnn_qat_drop", "vit - cnn")]
    assert gap.ci_low < 0 < gap.ci_high and not gap.shown


def _oscillation() -> pd.DataFrame:
    """Two epochs per run; only the last counts. CNN runs oscillate 1% (2% integer flips), ViT runs 3% (4%) ± 0.5."""
    rows = []
    for model, family, share in (("r", "cnn", 0.01), ("v", "vit", 0.03)):
        for seed, jitter in enumerate((-0.005, 0.0, 0.005)):
            for q in (0, 1):
                for epoch, scale in ((1, 10.0), (2, 1.0)):
                    rows.append(
                        dict(
                            model=model,
                            family=family,
                            w_bits=4,
                            a_bits=4,
                            seed=seed,
                            qat_seed=q,
                            epoch=epoch,
                            layer="(all)",
                            oscillating_share=scale * (share + jitter),
                            integer_flip_share=scale * (share + 0.01 + jitter),
                            frozen_share=0.0,
                        )
                    )
                rows.append({**rows[-1], "layer": "conv1", "oscillating_share": 0.9})  # a layer row, not the model
    return pd.DataFrame(rows)


def test_oscillation_gap_is_last_epoch_whole_model_share_in_percent():
    table = findings_table(_accuracy(), oscillation=_oscillation()).set_index("claim")
    for claim in ("vit_minus_cnn_oscillation", "vit_minus_cnn_integer_flips"):
        row = table.loc[claim]
        assert row.effect == pytest.approx(2.0) and row.n == 6 and row.unit == "% of weights"
        # equal spread in both families: half-width t(4) * sqrt(2 * 0.25 / 3)
        assert row.ci_high - row.effect == pytest.approx(t_critical(4) * (2 * 0.25 / 3) ** 0.5)
        assert row.shown


def test_variation_gap_per_kind_and_statistic_leaves_attention_internals_out():
    rows = []
    for model, family, kurtosis in (("r", "cnn", 3.0), ("m", "cnn", 4.0), ("v", "vit", 9.0), ("s", "vit", 10.0)):
        for seed in (0, 1):
            for kind in ("weight", "activation"):
                rows.append(
                    dict(
                        model=model,
                        family=family,
                        seed=seed,
                        layer="fc",
                        group="head",
                        kind=kind,
                        kurtosis=kurtosis + seed,
                        channel_cv=0.1,
                        outlier_ratio=0.01,
                    )
                )
            rows.append(
                dict(
                    model=model,
                    family=family,
                    seed=seed,
                    layer="attn.q",
                    group="attention_map",
                    kind="activation",
                    kurtosis=1000.0,
                    channel_cv=5.0,
                    outlier_ratio=0.5,
                )
            )
    table = findings_table(_accuracy(), variation=pd.DataFrame(rows)).set_index("claim")
    for kind in ("weight", "activation"):
        row = table.loc[f"vit_minus_cnn_{kind}_kurtosis"]
        assert (row.effect, row.n, row.w_bits, row.unit) == (6.0, 8, 32, "kurtosis") and row.shown
        assert table.loc[f"vit_minus_cnn_{kind}_channel_cv"].effect == pytest.approx(0.0)
    assert "| vit_minus_cnn_weight_kurtosis | vit - cnn | FP32 | +6 |" in findings_markdown(
        findings_table(_accuracy(), variation=pd.DataFrame(rows))
    )


def _ablation() -> pd.DataFrame:
    rows = []
    for arm, gain, oscillation in (("main", 0.0, 0.02), ("kd", 1.0, 0.01)):
        for qat_seed, jitter in enumerate((-1.0, 0.0, 1.0)):  # shared by both arms: it cancels in the pairs
            rows.append(
                dict(
                    arm=arm,
                    model="r",
                    family="cnn",
                    w_bits=2,
                    a_bits=2,
                    seed=0,
                    qat_seed=qat_seed,
                    top1=80.0 + jitter + gain + 0.1 * qat_seed * (arm == "kd"),
                    fp32_top1=90.0,
                    last_epoch_val_gain=0.2 * qat_seed,
                    oscillating_share=oscillation,
                )
            )
    return pd.DataFrame(rows)


def test_ablation_findings_pair_each_arm_run_with_the_main_run_of_its_fp32_model_and_qat_seed():
    table = ablation_findings(_ablation(), "main").set_index("claim")
    top1 = table.loc["arm_minus_main_top1"]
    # differences 1.0, 1.1, 1.2: the QAT seeds' jitter cancels, the interval is over the three pairs
    assert (top1.subject, top1.n, top1.w_bits) == ("kd: r", 3, 2) and top1.effect == pytest.approx(1.1)
    assert top1.ci_high - top1.effect == pytest.approx(t_critical(2) * 0.1 / 3**0.5) and top1.shown
    oscillation = table.loc["arm_minus_main_oscillation"]
    assert oscillation.effect == pytest.approx(-1.0) and oscillation.unit == "% of weights"
    assert "main: r" not in set(table.subject[table.index != "main_last_epoch_val_gain"])
    convergence = table.loc["main_last_epoch_val_gain"]  # gains 0, 0.2, 0.4 of the main protocol's runs
    assert (convergence.subject, convergence.n, convergence.unit) == ("main: r", 3, "validation top-1 points")
    assert convergence.effect == pytest.approx(0.2) and not convergence.shown


def test_ablation_findings_leave_out_runs_without_a_main_partner():
    ablation = _ablation()
    ablation = ablation[~((ablation.arm == "main") & (ablation.qat_seed == 2))]
    assert ablation_findings(ablation, "main").set_index("claim").loc["arm_minus_main_top1"].n == 2


def test_every_number_in_the_readme_findings_is_in_the_generated_tables():
    """The README restates the committed study's findings; each two-decimal number it gives there must be in a
    table the workflow wrote (findings, ablation findings or summary), so none is typed by hand."""
    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    section = readme.split("## What the study found", 1)[1].split("\n## ", 1)[0]
    tables = "".join(
        path.read_text()
        for path in sorted((repo / "results").glob("*/tables/*.md"))
        if path.stem in ("findings", "ablation_findings", "summary")
    )
    numbers = set(re.findall(r"\d+\.\d\d(?!\d)", section))
    assert numbers, "the README's findings section gives no numbers"
    assert sorted(n for n in numbers if n not in tables) == []
