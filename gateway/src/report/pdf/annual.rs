//! The annual energy utilisation report, laid out.

use krilla::text::Font;

use super::{finish, format_num, level_text, month_label, opt, pct, Layout, BODY};
use crate::report::annual::{AnnualReport, DrawnFrom, MIN_COMPLETENESS};
use crate::report::seal::Sealed;
use ems_energy::model::Role;
use ems_energy::Plant;

/// The annual report as PDF bytes.
pub fn annual(
    r: &AnnualReport,
    plant: &Plant,
    font: &Font,
    sealed: Option<&Sealed>,
) -> anyhow::Result<Vec<u8>> {
    finish(
        layout(r, plant),
        format!("{}年度能源利用状况报告", r.year),
        font,
        sealed,
    )
}

fn layout(r: &AnnualReport, plant: &Plant) -> Layout {
    let mut l = Layout::new(format!(
        "{} {}年度能源利用状况报告 · 数据版本 {} · 生成于 {}",
        r.enterprise.clone().unwrap_or_default(),
        r.year,
        r.version,
        r.generated_at
    ));
    l.paragraph(18.0, format!("{}年度能源利用状况报告", r.year));
    l.paragraph(
        11.0,
        format!(
            "重点用能单位：{}",
            r.enterprise.clone().unwrap_or_else(|| "（未配置）".into())
        ),
    );
    if let Some(code) = &r.enterprise_code {
        l.paragraph(BODY, format!("统一社会信用代码：{code}"));
    }
    l.paragraph(BODY, format!("报告期：{} 至 {}", r.start, r.end));
    l.paragraph(
        BODY,
        "折标系数见 GB/T 2589；限额等级见各单位所执行的能耗限额标准；数据完整率不低于 90% 方可上报。",
    );

    l.heading("一、能源消费总量");
    let t = &r.totals;
    l.table(
        &[200.0, 150.0],
        &["指标", "数值"],
        &[
            vec![
                match t.drawn_from {
                    DrawnFrom::Boundary => "综合能源消费量（tce，按企业边界）".into(),
                    DrawnFrom::SumOfUnits => {
                        "综合能源消费量（tce，各单位合计：未配置边界计量）".into()
                    }
                },
                format_num(t.comprehensive_tce, 3),
            ],
            vec![
                "其中：当量值 / 等价值（tce）".into(),
                format!(
                    "{} / {}",
                    format_num(t.comprehensive_equivalent_tce, 3),
                    format_num(t.comprehensive_equal_value_tce, 3)
                ),
            ],
            vec!["各单位合计（tce）".into(), format_num(t.units_sum_tce, 3)],
            vec!["能源消费量（tce）".into(), format_num(t.consumed_tce, 3)],
            vec![
                "余热余能回收利用量（tce）".into(),
                format_num(t.recovered_tce, 3),
            ],
            vec!["取水量（m³）".into(), format_num(t.water_m3, 1)],
        ],
    );

    l.heading("二、分品种能源消费");
    let carrier_rows: Vec<Vec<String>> = t
        .by_carrier
        .iter()
        .map(|c| {
            let name = plant
                .coefficients
                .get(&c.carrier)
                .map_or(c.carrier.clone(), |k| k.name_zh.clone());
            let role = if c.role == Role::Recovered {
                "回收"
            } else {
                "消费"
            };
            vec![
                name,
                role.into(),
                format_num(c.quantity, 2),
                c.unit.clone(),
                opt(c.kgce_per_unit, 4),
                format_num(c.kgce / 1000.0, 3),
            ]
        })
        .collect();
    l.table(
        &[130.0, 40.0, 100.0, 50.0, 70.0, 90.0],
        &[
            "能源品种",
            "类别",
            "实物量",
            "单位",
            "折标系数",
            "折标准煤（tce）",
        ],
        &carrier_rows,
    );

    if let Some(b) = &r.balance {
        l.paragraph(
            11.0,
            "能源平衡表（企业边界，GB/T 28751）：供应 = 购入 - 库存增加 + 产出；未计量差额为损失及未计量用户",
        );
        let name = |code: &str| {
            plant
                .coefficients
                .get(code)
                .map_or(code.to_owned(), |k| k.name_zh.clone())
        };
        let rows: Vec<Vec<String>> = b
            .carriers
            .iter()
            .map(|c| {
                let generated: f64 = c.generated.iter().map(|n| n.quantity).sum();
                let consumed: f64 = c.consumed.iter().map(|n| n.quantity).sum();
                vec![
                    format!("{}（{}）", name(&c.carrier), c.unit),
                    format_num(c.purchase, 1),
                    format_num(c.stock_change, 1),
                    format_num(generated, 1),
                    format_num(consumed, 1),
                    format_num(c.export, 1),
                    format_num(c.flared, 1),
                    format!(
                        "{}{}",
                        format_num(c.remainder, 1),
                        c.remainder_pct
                            .map_or(String::new(), |p| format!(" ({p:.2}%)"))
                    ),
                ]
            })
            .collect();
        l.table(
            &[90.0, 58.0, 48.0, 58.0, 60.0, 46.0, 45.0, 90.0],
            &[
                "能源品种",
                "购入",
                "库存增加",
                "产出",
                "分配使用",
                "外销",
                "放散",
                "未计量差额",
            ],
            &rows,
        );
    }

    l.heading("三、月度能源消费");
    let month_rows: Vec<Vec<String>> = r
        .months
        .iter()
        .map(|m| {
            vec![
                month_label(&m.start),
                format_num(m.consumed_tce, 3),
                format_num(m.recovered_tce, 3),
                format_num(m.comprehensive_tce, 3),
                format_num(m.water_m3, 1),
            ]
        })
        .collect();
    l.table(
        &[60.0, 100.0, 100.0, 100.0, 100.0],
        &[
            "月份",
            "消费（tce）",
            "回收（tce）",
            "综合（tce）",
            "取水（m³）",
        ],
        &month_rows,
    );
    l.bar_chart(
        "月度综合能源消费量",
        "tce",
        &r.months
            .iter()
            .map(|m| month_label(&m.start))
            .collect::<Vec<_>>(),
        &r.months
            .iter()
            .map(|m| Some(m.comprehensive_tce))
            .collect::<Vec<_>>(),
        &[],
    );

    if let Some(y) = &r.intensity {
        let (now, before) = (&y.this_year, &y.previous_year);
        let per = |v: Option<f64>| v.map_or("—".to_owned(), |v| format_num(v, 4));
        l.paragraph(
            10.0,
            format!(
                "万元产值综合能耗 {} tce/万元（上年 {}），万元增加值综合能耗 {} tce/万元（上年 {}）",
                per(now.tce_per_10k_yuan_output),
                per(before.tce_per_10k_yuan_output),
                per(now.tce_per_10k_yuan_value_added),
                per(before.tce_per_10k_yuan_value_added),
            ),
        );
        let verdict = match (y.target_met, &y.not_judged) {
            (Some(true), _) => "完成".to_owned(),
            (Some(false), _) => "未完成".to_owned(),
            (None, Some(why)) => format!("不评价：{why}"),
            (None, None) => "不评价".to_owned(),
        };
        l.paragraph(
            10.0,
            format!(
                "同比变化 {} %，下降目标 {} %：{}",
                y.change_pct.map_or("—".to_owned(), |c| format_num(c, 2)),
                y.target_reduction_pct
                    .map_or("—".to_owned(), |t| format_num(t, 2)),
                verdict
            ),
        );
    }

    l.heading("四、主要产品单位产品能耗与取水");
    let unit_rows: Vec<Vec<String>> = r
        .units
        .iter()
        .map(|u| {
            let y = &u.year;
            let limit = y.limits.first().map_or("—".into(), |j| j.standard.clone());
            let water = y.water_quota.as_ref().map_or("—".into(), |w| {
                format!("{:.3}/{:.3}", w.general, w.advanced)
            });
            vec![
                u.name.clone(),
                format_num(y.product_t, 1),
                opt(y.kgce_per_t, 2),
                limit,
                level_text(y),
                opt(y.water_m3_per_t, 3),
                water,
            ]
        })
        .collect();
    l.table(
        &[110.0, 65.0, 60.0, 85.0, 45.0, 55.0, 75.0],
        &[
            "单元",
            "产量（t）",
            "kgce/t",
            "限额标准",
            "等级",
            "取水 m³/t",
            "定额 通用/先进",
        ],
        &unit_rows,
    );
    if !r.sites_water.is_empty() {
        l.paragraph(
            11.0,
            "厂区取水（GB/T 18916：厂区取水量按厂区产品产量计，主要、辅助及附属生产合计）",
        );
        let rows: Vec<Vec<String>> = r
            .sites_water
            .iter()
            .map(|w| {
                let (quota, grade) = match &w.quota {
                    Some(q) => (
                        format!("{:.3}/{:.3}", q.general, q.advanced),
                        match q.grade {
                            "advanced" => "先进",
                            "general" => "通用",
                            _ => "超定额",
                        }
                        .to_owned(),
                    ),
                    None => ("—".into(), "未评价".into()),
                };
                vec![
                    w.name.clone(),
                    format_num(w.intake_m3, 1),
                    format_num(w.product_t, 1),
                    opt(w.m3_per_t, 3),
                    quota,
                    grade,
                    pct(w.completeness),
                ]
            })
            .collect();
        l.table(
            &[100.0, 75.0, 70.0, 60.0, 75.0, 45.0, 55.0],
            &[
                "厂区",
                "取水量（m³）",
                "产量（t）",
                "m³/t",
                "定额 通用/先进",
                "评价",
                "完整率",
            ],
            &rows,
        );
    }
    let captive = r.balance.iter().flat_map(|b| &b.captive_power);
    let rows: Vec<Vec<String>> = captive
        .map(|p| {
            vec![
                p.name.clone(),
                format!("{} {}", format_num(p.generation, 0), p.measure),
                format!("{} {}", format_num(p.own_use, 0), p.measure),
                format!("{} {}", format_num(p.supply, 0), p.measure),
                opt(p.own_use_pct, 2),
            ]
        })
        .collect();
    if !rows.is_empty() {
        l.paragraph(11.0, "自备电厂（发电量、厂用电量、供电量、厂用电率 %）");
        l.table(
            &[130.0, 100.0, 100.0, 100.0, 65.0],
            &["电厂", "发电量", "厂用电量", "供电量", "厂用电率 %"],
            &rows,
        );
    }
    for u in &r.units {
        l.heading(&format!("{}（{}）月度指标", u.name, u.id));
        // A potline's DC energy and current efficiency over the year, where it meters them.
        if let (Some(dc), Some(ce)) = (u.year.dc_kwh_per_t, u.year.current_efficiency_pct) {
            l.paragraph(
                9.0,
                format!(
                    "全年直流电耗 {} kWh/t，电流效率 {} %（法拉第定律，{} kA·h）",
                    format_num(dc, 0),
                    format_num(ce, 2),
                    format_num(u.year.line_kah, 0)
                ),
            );
        }
        let rows: Vec<Vec<String>> = u
            .months
            .iter()
            .map(|m| {
                let complete = if m.completeness < MIN_COMPLETENESS {
                    format!("!{}", pct(m.completeness))
                } else {
                    pct(m.completeness)
                };
                vec![
                    month_label(&m.start),
                    format_num(m.product_t, 1),
                    format_num(m.energy_kgce / 1000.0, 3),
                    opt(m.kgce_per_t, 2),
                    opt(m.kwh_per_t, 1),
                    level_text(m),
                    complete,
                    pct(m.estimated_share),
                ]
            })
            .collect();
        l.table(
            &[45.0, 75.0, 80.0, 60.0, 60.0, 50.0, 60.0, 60.0],
            &[
                "月份",
                "产量（t）",
                "综合（tce）",
                "kgce/t",
                "kWh/t",
                "等级",
                "完整率",
                "估算占比",
            ],
            &rows,
        );
        let lines: Vec<(String, f64)> = u
            .year
            .limits
            .first()
            .filter(|j| j.indicator == ems_energy::limits::Figure::KgcePerT)
            .map(super::limit_lines)
            .unwrap_or_default();
        l.bar_chart(
            &format!("{} 月度单位产品综合能耗", u.name),
            "kgce/t",
            &u.months
                .iter()
                .map(|m| month_label(&m.start))
                .collect::<Vec<_>>(),
            &u.months.iter().map(|m| m.kgce_per_t).collect::<Vec<_>>(),
            &lines,
        );
    }

    l.heading("五、数据质量");
    l.paragraph(BODY, "计量点月度数据完整率（红色：低于 90%，不可上报）");
    let mut widths = vec![115.0];
    widths.extend(std::iter::repeat_n(32.5, 12));
    let mut header = vec!["计量点"];
    let month_names: Vec<String> = (1..=12).map(|m| format!("{m}月")).collect();
    header.extend(month_names.iter().map(String::as_str));
    let meter_rows: Vec<Vec<String>> = r
        .data_quality
        .meters
        .iter()
        .map(|m| {
            let mut row = vec![format!("{}/{}", m.device, m.point)];
            row.extend(m.months.iter().map(|mm| match mm.completeness {
                Some(c) if c < MIN_COMPLETENESS => format!("!{:.0}", c * 100.0),
                Some(c) => format!("{:.0}", c * 100.0),
                None => "—".into(),
            }));
            row
        })
        .collect();
    l.table(&widths, &header, &meter_rows);
    l.paragraph(BODY, "设备序列号台账");
    l.sequence_table(&r.data_quality.sequence);
    let worst = r
        .data_quality
        .daily_vs_monthly
        .iter()
        .filter_map(|d| d.deviation_pct.map(|p| (p, d)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    l.paragraph(
        BODY,
        match worst {
            Some((p, d)) => format!(
                "日数据累计与月数据最大偏差：{p:.4}%（{} {}，限值 {:.0}%）",
                d.unit,
                month_label(&d.start),
                r.data_quality.max_daily_monthly_deviation_pct
            ),
            None => "日数据累计与月数据偏差：无数据".into(),
        },
    );
    l
}
