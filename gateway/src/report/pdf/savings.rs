//! The energy-savings verification, laid out: the baseline model and its ASHRAE Guideline 14
//! judgement, savings both ways, the reporting months with their CUSUM chart, and the months
//! left out for their data.

use krilla::text::Font;

use crate::report::seal::Sealed;

use super::{finish, format_num, opt, Layout, BODY};
use crate::report::savings::SavingsReport;

/// The savings verification as PDF bytes.
pub fn savings(r: &SavingsReport, font: &Font, sealed: Option<&Sealed>) -> anyhow::Result<Vec<u8>> {
    let v = &r.verification;
    let m = &v.model;
    let title = format!("{} 节能量审核报告", r.unit_name);
    let mut l = Layout::new(format!("{title} · 数据版本 {}", r.version));
    l.paragraph(18.0, title.clone());
    let span = |o: &[ems_energy::baseline::Observation]| match (o.first(), o.last()) {
        (Some(a), Some(b)) => format!("{} 至 {}（{} 个月）", a.label, b.label, o.len()),
        _ => "无".into(),
    };
    l.paragraph(BODY, format!("基准期：{}", span(&r.baseline_months)));
    l.paragraph(BODY, format!("报告期：{}", span(&r.reporting_months)));

    l.heading("一、能耗基准模型（综合能耗 = a + Σ bᵢ × 相关变量ᵢ）");
    let verdict = if m.accepted { "接受" } else { "!不接受" };
    let mut rows = vec![vec![
        "截距 a（kgce）".into(),
        format_num(m.coefficients[0], 1),
        String::new(),
    ]];
    for (name, b) in m.variables.iter().zip(&m.coefficients[1..]) {
        let name = if name == "output_t" {
            "产量（t）"
        } else {
            name
        };
        rows.push(vec![
            format!("系数 b：{name}"),
            format_num(*b, 4),
            String::new(),
        ]);
    }
    rows.extend([
        vec!["样本月数".into(), m.observations.to_string(), String::new()],
        vec!["R²".into(), format_num(m.r2, 4), format!("≥ {}", m.min_r2)],
        vec![
            "CV(RMSE)".into(),
            format!("{:.2}%", m.cv_rmse_pct),
            format!("≤ {}%（ASHRAE Guideline 14）", m.max_cv_rmse_pct),
        ],
        vec![
            "NMBE".into(),
            format!("{:.3}%", m.nmbe_pct),
            format!("±{}%（ASHRAE Guideline 14）", m.max_abs_nmbe_pct),
        ],
        vec!["模型判定".into(), verdict.into(), String::new()],
    ]);
    l.table(&[200.0, 120.0, 150.0], &["统计量", "数值", "判据"], &rows);

    l.heading("二、节能量");
    l.table(
        &[260.0, 150.0],
        &["指标", "数值"],
        &[
            vec![
                "基准期单位产品综合能耗（kgce/t）".into(),
                opt(v.baseline_kgce_per_t, 2),
            ],
            vec![
                "报告期单位产品综合能耗（kgce/t）".into(),
                opt(v.reporting_kgce_per_t, 2),
            ],
            vec![
                "报告期产量（t）".into(),
                format_num(v.reporting_output_t, 1),
            ],
            vec![
                "节能量，产品单耗法（tce）".into(),
                opt(v.product_method_savings_tce, 3),
            ],
            vec![
                "节能量，基准模型法（tce）".into(),
                format_num(v.avoided_tce, 3),
            ],
        ],
    );

    l.heading("三、报告期逐月对比");
    let rows: Vec<Vec<String>> = v
        .periods
        .iter()
        .map(|p| {
            vec![
                p.label.clone(),
                format_num(p.actual_kgce / 1000.0, 3),
                format_num(p.adjusted_baseline_kgce / 1000.0, 3),
                format_num(p.avoided_kgce / 1000.0, 3),
                format_num(p.cusum_kgce / 1000.0, 3),
            ]
        })
        .collect();
    l.table(
        &[80.0, 100.0, 110.0, 100.0, 100.0],
        &[
            "月份",
            "实际（tce）",
            "校正基准（tce）",
            "节能（tce）",
            "CUSUM（tce）",
        ],
        &rows,
    );
    l.bar_chart(
        "累积和 CUSUM（实际 − 校正基准，下降为节能）",
        "tce",
        &v.periods
            .iter()
            .map(|p| p.label.get(5..).unwrap_or(&p.label).to_owned())
            .collect::<Vec<_>>(),
        &v.periods
            .iter()
            .map(|p| Some(p.cusum_kgce / 1000.0))
            .collect::<Vec<_>>(),
        &[],
    );

    l.heading("四、数据质量");
    l.paragraph(
        BODY,
        if r.excluded.is_empty() {
            "两期各月数据完整率均不低于 90%，全部参与计算。".to_owned()
        } else {
            format!(
                "完整率低于 90% 或无产量、未参与计算的月份：{}",
                r.excluded.join("、")
            )
        },
    );
    let rows: Vec<Vec<String>> = r
        .data_quality
        .meters
        .iter()
        .map(|m| {
            let worst = m
                .months
                .iter()
                .filter_map(|mm| mm.completeness)
                .fold(f64::INFINITY, f64::min);
            let short: Vec<&str> = m
                .months
                .iter()
                .filter(|mm| !mm.reportable)
                .map(|mm| mm.start.get(..7).unwrap_or(&mm.start))
                .collect();
            let worst = if worst.is_finite() {
                super::pct(worst)
            } else {
                "—".into()
            };
            let short = if short.is_empty() {
                "无".to_owned()
            } else {
                format!("!{}", short.join("、"))
            };
            vec![format!("{}/{}", m.device, m.point), worst, short]
        })
        .collect();
    l.table(
        &[180.0, 90.0, 225.0],
        &["计量点", "最低月完整率", "低于 90% 的月份"],
        &rows,
    );
    l.sequence_table(&r.data_quality.sequence);
    finish(l, title, font, sealed)
}
