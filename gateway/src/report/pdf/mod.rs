//! Reports as PDF in Chinese: tables and charts drawn with krilla, which embeds the subset of
//! the CJK font the text uses (so the file shows the same everywhere). This module is the page
//! engine; [`annual`], [`compliance`] and [`savings`] lay out their report.
//!
//! Layout is two passes: [`Layout`] places text, lines and boxes on pages (breaking pages where
//! a block would not fit), then [`render`] draws them. The font is the plant's choice (`--font`)
//! or the first Debian CJK font found.

use std::path::{Path, PathBuf};

use krilla::color::rgb;
use krilla::geom::{PathBuilder, Point, Rect};
use krilla::num::NormalizedF32;
use krilla::page::PageSettings;
use krilla::paint::{Fill, Stroke};
use krilla::text::{Font, TextDirection};
use krilla::Document;

use ems_energy::indicators::Indicator;

mod annual;
mod compliance;
mod evidence;
mod savings;

pub use annual::annual;
pub use compliance::compliance;
pub use savings::savings;

const PAGE_W: f32 = 595.28;
const PAGE_H: f32 = 841.89;
const MARGIN: f32 = 50.0;
const BODY: f32 = 9.0;

/// Debian's CJK fonts, in order of preference, with the face index of Simplified Chinese.
const SYSTEM_FONTS: &[(&str, u32)] = &[
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc", 2),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
    ("/usr/share/fonts/truetype/arphic/uming.ttc", 0),
];

/// The font to embed: `path` (a face index after a colon for collections), or the first
/// system CJK font found.
pub fn load_font(path: Option<&str>) -> anyhow::Result<(PathBuf, Font)> {
    let (file, index) = match path {
        Some(p) => match p.rsplit_once(':') {
            Some((f, i)) if i.parse::<u32>().is_ok() => (PathBuf::from(f), i.parse()?),
            _ => (PathBuf::from(p), 0),
        },
        None => SYSTEM_FONTS
            .iter()
            .find(|(f, _)| Path::new(f).exists())
            .map(|&(f, i)| (PathBuf::from(f), i))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no Chinese font found: install fonts-noto-cjk or fonts-wqy-microhei, or pass --font FILE[:INDEX]"
                )
            })?,
    };
    let data = std::fs::read(&file).map_err(|e| anyhow::anyhow!("font {}: {e}", file.display()))?;
    let font = Font::new(data.into(), index).ok_or_else(|| {
        anyhow::anyhow!(
            "font {}: face {index} is not a font krilla can read",
            file.display()
        )
    })?;
    Ok((file, font))
}

#[derive(Debug, Clone)]
enum Item {
    Text {
        x: f32,
        y: f32,
        size: f32,
        text: String,
        color: (u8, u8, u8),
    },
    Line {
        x1: f32,
        y1: f32,
        x2: f32,
        y2: f32,
        width: f32,
        color: (u8, u8, u8),
    },
    Box {
        x: f32,
        y: f32,
        w: f32,
        h: f32,
        color: (u8, u8, u8),
    },
}

const BLACK: (u8, u8, u8) = (0, 0, 0);
const GREY: (u8, u8, u8) = (120, 120, 120);
const RED: (u8, u8, u8) = (190, 30, 30);

/// Pages of placed items, filled top to bottom.
struct Layout {
    pages: Vec<Vec<Item>>,
    y: f32,
    footer: String,
}

impl Layout {
    fn new(footer: String) -> Layout {
        Layout {
            pages: vec![Vec::new()],
            y: MARGIN,
            footer,
        }
    }

    fn page(&mut self) -> &mut Vec<Item> {
        self.pages.last_mut().expect("a page")
    }

    /// Starts a new page unless `h` more points fit on this one.
    fn room(&mut self, h: f32) {
        if self.y + h > PAGE_H - MARGIN {
            self.pages.push(Vec::new());
            self.y = MARGIN;
        }
    }

    fn text_at(&mut self, x: f32, y: f32, size: f32, text: impl Into<String>, color: (u8, u8, u8)) {
        self.page().push(Item::Text {
            x,
            y,
            size,
            text: text.into(),
            color,
        });
    }

    fn paragraph(&mut self, size: f32, text: impl Into<String>) {
        self.room(size * 1.8);
        self.y += size * 1.4;
        let y = self.y;
        self.text_at(MARGIN, y, size, text, BLACK);
        self.y += size * 0.4;
    }

    fn heading(&mut self, text: &str) {
        // Keep a heading with at least a few lines of what follows.
        self.room(80.0);
        self.y += 10.0;
        self.paragraph(13.0, text);
        let y = self.y + 2.0;
        self.page().push(Item::Line {
            x1: MARGIN,
            y1: y,
            x2: PAGE_W - MARGIN,
            y2: y,
            width: 0.6,
            color: GREY,
        });
        self.y += 6.0;
    }

    /// A table with a header row; columns get the given widths (points). A cell starting with
    /// '!' is drawn red (without the mark).
    fn table(&mut self, widths: &[f32], header: &[&str], rows: &[Vec<String>]) {
        let row_h = BODY * 1.7;
        let draw_header = |l: &mut Layout| {
            l.room(row_h * 2.0);
            l.y += row_h;
            let y = l.y;
            let mut x = MARGIN;
            for (w, h) in widths.iter().zip(header) {
                l.text_at(x, y - 4.0, BODY, *h, BLACK);
                x += w;
            }
            l.page().push(Item::Line {
                x1: MARGIN,
                y1: y,
                x2: MARGIN + widths.iter().sum::<f32>(),
                y2: y,
                width: 0.5,
                color: BLACK,
            });
        };
        draw_header(self);
        for row in rows {
            if self.y + row_h > PAGE_H - MARGIN {
                self.room(PAGE_H);
                draw_header(self);
            }
            self.y += row_h;
            let y = self.y;
            let mut x = MARGIN;
            for (w, cell) in widths.iter().zip(row) {
                let (text, color) = match cell.strip_prefix('!') {
                    Some(t) => (t.to_owned(), RED),
                    None => (cell.clone(), BLACK),
                };
                self.text_at(x, y - 4.0, BODY, text, color);
                x += w;
            }
            self.page().push(Item::Line {
                x1: MARGIN,
                y1: y,
                x2: MARGIN + widths.iter().sum::<f32>(),
                y2: y,
                width: 0.2,
                color: GREY,
            });
        }
        self.y += 6.0;
    }

    /// The devices' sequence ledgers, missing numbers in red: every report's last table.
    fn sequence_table(&mut self, ledgers: &[crate::report::annual::SequenceQuality]) {
        let rows: Vec<Vec<String>> = ledgers
            .iter()
            .map(|s| {
                let missing = if s.missing > 0 {
                    format!("!{}", s.missing)
                } else {
                    "0".into()
                };
                vec![
                    s.device.clone(),
                    s.messages.to_string(),
                    s.duplicates.to_string(),
                    missing,
                    s.lost.to_string(),
                ]
            })
            .collect();
        self.table(
            &[150.0, 80.0, 80.0, 80.0, 80.0],
            &["设备", "消息数", "重复（已剔除）", "缺失", "声明丢失"],
            &rows,
        );
    }

    /// A bar chart of `values` labelled below, with horizontal reference lines (label, value).
    fn bar_chart(
        &mut self,
        title: &str,
        unit: &str,
        labels: &[String],
        values: &[Option<f64>],
        lines: &[(String, f64)],
    ) {
        let (h, w) = (150.0, PAGE_W - 2.0 * MARGIN - 60.0);
        self.room(h + 50.0);
        self.paragraph(BODY, format!("{title}（{unit}）"));
        let top = self.y + 8.0;
        let (left, bottom) = (MARGIN + 45.0, top + h);
        let max = values
            .iter()
            .flatten()
            .copied()
            .chain(lines.iter().map(|l| l.1))
            .fold(0.0f64, f64::max)
            .max(f64::MIN_POSITIVE)
            * 1.1;
        let min = values.iter().flatten().copied().fold(0.0f64, f64::min);
        let span = max - min;
        let y_of = |v: f64| bottom - ((v - min) / span) as f32 * h;
        let axis = |l: &mut Layout, v: f64| {
            let y = y_of(v);
            l.text_at(MARGIN, y + 3.0, 7.0, format_num(v, 0), GREY);
            l.page().push(Item::Line {
                x1: left,
                y1: y,
                x2: left + w,
                y2: y,
                width: 0.2,
                color: GREY,
            });
        };
        for i in 0..=4 {
            axis(self, min + span / 1.1 * i as f64 / 4.0);
        }
        let slot = w / values.len().max(1) as f32;
        for (i, (label, v)) in labels.iter().zip(values).enumerate() {
            let x = left + slot * i as f32;
            if let Some(v) = v {
                let (y0, y1) = (y_of(0.0_f64.max(min)), y_of(*v));
                self.page().push(Item::Box {
                    x: x + slot * 0.2,
                    y: y1.min(y0),
                    w: slot * 0.6,
                    h: (y0 - y1).abs(),
                    color: (70, 110, 170),
                });
            }
            self.text_at(x + slot * 0.2, bottom + 10.0, 7.0, label.clone(), BLACK);
        }
        for (label, v) in lines {
            let y = y_of(*v);
            self.page().push(Item::Line {
                x1: left,
                y1: y,
                x2: left + w,
                y2: y,
                width: 0.8,
                color: RED,
            });
            self.text_at(left + w + 3.0, y + 3.0, 7.0, label.clone(), RED);
        }
        self.y = bottom + 18.0;
    }
}

fn format_num(v: f64, decimals: usize) -> String {
    format!("{v:.decimals$}")
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format_num(v, decimals))
        .unwrap_or_else(|| "—".into())
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn level_text(i: &Indicator) -> String {
    match (i.level, i.within_limit) {
        (Some(l), _) => format!("{l}级"),
        (None, Some(false)) => "!超限额".into(),
        _ => "未评价".into(),
    }
}

fn month_label(start: &str) -> String {
    start
        .get(5..7)
        .map(|m| format!("{}月", m.trim_start_matches('0')))
        .unwrap_or_default()
}

/// A limit's corrected level 1-3 thresholds as a chart's reference lines.
fn limit_lines(j: &ems_energy::limits::Judgement) -> Vec<(String, f64)> {
    j.thresholds
        .iter()
        .enumerate()
        .filter(|(_, t)| t.is_finite())
        .map(|(i, t)| (format!("{}级", i + 1), *t))
        .collect()
}

/// Draws laid-out pages into a PDF titled `title`, with `font` embedded (subset); with `sealed`,
/// an evidence page last and the sealed JSON attached ([`evidence`]).
fn finish(
    mut l: Layout,
    title: String,
    font: &Font,
    sealed: Option<&crate::report::seal::Sealed>,
) -> anyhow::Result<Vec<u8>> {
    if let Some(sealed) = sealed {
        evidence::page(&mut l, sealed);
    }
    let total = l.pages.len();
    let mut doc = Document::new();
    doc.set_metadata(
        krilla::metadata::Metadata::new()
            .title(title)
            .language("zh-CN".into())
            .creator("ems-gateway".into()),
    );
    if let Some(sealed) = sealed {
        doc.embed_file(krilla::embed::EmbeddedFile {
            path: evidence::ATTACHMENT.into(),
            mime_type: krilla::embed::MimeType::new("application/json"),
            description: Some("签名原件：报告及其证据，由网关签名".into()),
            association_kind: krilla::embed::AssociationKind::Source,
            data: sealed.json.clone().into(),
            modification_date: None,
            compress: None,
            location: None,
        })
        .ok_or_else(|| anyhow::anyhow!("PDF: the report's JSON could not be attached"))?;
    }
    for (n, items) in l.pages.iter().enumerate() {
        let mut page = doc.start_page_with(PageSettings::from_wh(PAGE_W, PAGE_H).expect("A4"));
        let mut s = page.surface();
        for item in items {
            draw(&mut s, font, item);
        }
        let footer = Item::Text {
            x: MARGIN,
            y: PAGE_H - MARGIN / 2.0,
            size: 7.0,
            text: format!("{} · 第 {} 页 / 共 {total} 页", l.footer, n + 1),
            color: GREY,
        };
        draw(&mut s, font, &footer);
        s.finish();
        page.finish();
    }
    doc.finish().map_err(|e| anyhow::anyhow!("PDF: {e:?}"))
}

fn draw(s: &mut krilla::surface::Surface<'_>, font: &Font, item: &Item) {
    let color = |(r, g, b): (u8, u8, u8)| rgb::Color::new(r, g, b);
    match item {
        Item::Text {
            x,
            y,
            size,
            text,
            color: c,
        } => {
            s.set_fill(Some(Fill {
                paint: color(*c).into(),
                ..Fill::default()
            }));
            s.set_stroke(None);
            s.draw_text(
                Point::from_xy(*x, *y),
                font.clone(),
                *size,
                text,
                false,
                TextDirection::Auto,
            );
        }
        Item::Line {
            x1,
            y1,
            x2,
            y2,
            width,
            color: c,
        } => {
            let mut pb = PathBuilder::new();
            pb.move_to(*x1, *y1);
            pb.line_to(*x2, *y2);
            if let Some(path) = pb.finish() {
                s.set_fill(None);
                s.set_stroke(Some(Stroke {
                    paint: color(*c).into(),
                    width: *width,
                    ..Stroke::default()
                }));
                s.draw_path(&path);
            }
        }
        Item::Box {
            x,
            y,
            w,
            h,
            color: c,
        } => {
            let mut pb = PathBuilder::new();
            if let Some(rect) = Rect::from_xywh(*x, *y, *w, h.max(0.1)) {
                pb.push_rect(rect);
            }
            if let Some(path) = pb.finish() {
                s.set_stroke(None);
                s.set_fill(Some(Fill {
                    paint: color(*c).into(),
                    opacity: NormalizedF32::ONE,
                    ..Fill::default()
                }));
                s.draw_path(&path);
            }
        }
    }
}
