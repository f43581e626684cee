//! Small line plots (loss curves, evaluation curves) drawn straight into PNGs, with a tiny
//! built-in digit font so axes carry numbers without any font files.

use image::{Rgb, RgbImage};

/// 3×5 glyphs for the characters numbers need.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        'e' => [0b000, 0b111, 0b111, 0b100, 0b111],
        ' ' => [0; 5],
        '%' => [0b101, 0b001, 0b010, 0b100, 0b101],
        '(' => [0b001, 0b010, 0b010, 0b010, 0b001],
        ')' => [0b100, 0b010, 0b010, 0b010, 0b100],
        '/' => [0b001, 0b001, 0b010, 0b100, 0b100],
        ':' => [0b000, 0b010, 0b000, 0b010, 0b000],
        'x' | 'X' => [0b101, 0b101, 0b010, 0b101, 0b101],
        'a' | 'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'b' | 'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'c' | 'C' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'd' | 'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'f' | 'F' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'g' | 'G' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'h' | 'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'i' | 'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'j' | 'J' => [0b001, 0b001, 0b001, 0b101, 0b010],
        'k' | 'K' => [0b101, 0b101, 0b110, 0b101, 0b101],
        'l' | 'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'm' | 'M' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'n' | 'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'o' | 'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'p' | 'P' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'q' | 'Q' => [0b010, 0b101, 0b101, 0b110, 0b011],
        'r' | 'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        's' | 'S' => [0b011, 0b100, 0b010, 0b001, 0b110],
        't' | 'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'u' | 'U' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'v' | 'V' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'w' | 'W' => [0b101, 0b101, 0b111, 0b111, 0b101],
        'y' | 'Y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        'z' | 'Z' => [0b111, 0b001, 0b010, 0b100, 0b111],
        _ => return None,
    })
}

/// Draws `text` with 2× scaled glyphs at (x, y).
pub fn draw_text(img: &mut RgbImage, text: &str, x: i64, y: i64, color: [u8; 3]) {
    let scale = 2;
    for (i, c) in text.chars().enumerate() {
        let Some(g) = glyph(c) else { continue };
        for (row, bits) in g.iter().enumerate() {
            for col in 0..3 {
                if bits & (0b100 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let px = x + (i as i64 * 4 + col) * scale + dx;
                            let py = y + row as i64 * scale + dy;
                            if px >= 0
                                && py >= 0
                                && (px as u32) < img.width()
                                && (py as u32) < img.height()
                            {
                                img.put_pixel(px as u32, py as u32, Rgb(color));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), color: [u8; 3]) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, Rgb(color));
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e6 {
        format!("{v:.0}")
    } else if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-2) {
        format!("{v:.1e}")
    } else {
        format!("{v:.3}")
    }
}

/// One curve of a plot: its `(x, y)` points and colour.
pub type Series<'a> = (&'a [(f64, f64)], [u8; 3]);

/// Writes one legend line per `(label, colour)` in the top-right corner of a plot, with a
/// short stroke of the colour before each label.
pub fn legend(img: &mut RgbImage, entries: &[(&str, [u8; 3])]) {
    let longest = entries.iter().map(|(l, _)| l.len()).max().unwrap_or(0) as i64;
    let x = img.width() as i64 - 20 - 8 * longest - 24;
    for (i, (label, color)) in entries.iter().enumerate() {
        let y = 16 + 16 * i as i64;
        for t in 0..3 {
            line(
                img,
                (x as f64, (y + 4 + t) as f64),
                ((x + 16) as f64, (y + 4 + t) as f64),
                *color,
            );
        }
        draw_text(img, &label.to_uppercase(), x + 22, y, [40, 40, 40]);
    }
}

/// A plot of one or more series `(x, y)` with shared axes, labelled min/max ticks.
pub fn line_plot(series: &[Series<'_>], width: u32, height: u32) -> RgbImage {
    line_plot_in(series, width, height, None)
}

/// As [`line_plot`], with the y axis spanning at least `y_range` (scores in [0, 1], say).
pub fn line_plot_in(
    series: &[Series<'_>],
    width: u32,
    height: u32,
    y_range: Option<(f64, f64)>,
) -> RgbImage {
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let points: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(s, _)| s.iter().copied())
        .filter(|p| p.1.is_finite())
        .collect();
    if points.is_empty() {
        return img;
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in &points {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if let Some((lo, hi)) = y_range {
        y0 = y0.min(lo);
        y1 = y1.max(hi);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let (left, right, top, bottom) = (70.0, 10.0, 10.0, 30.0);
    let (pw, ph) = (width as f64 - left - right, height as f64 - top - bottom);
    let grey = [200, 200, 200];
    for i in 0..=4 {
        let y = top + ph * i as f64 / 4.0;
        line(&mut img, (left, y), (left + pw, y), grey);
        let v = y1 - (y1 - y0) * i as f64 / 4.0;
        draw_text(&mut img, &fmt_num(v), 2, y as i64 - 5, [60, 60, 60]);
    }
    line(&mut img, (left, top), (left, top + ph), [0, 0, 0]);
    line(&mut img, (left, top + ph), (left + pw, top + ph), [0, 0, 0]);
    draw_text(
        &mut img,
        &fmt_num(x0),
        left as i64,
        (top + ph + 8.0) as i64,
        [60, 60, 60],
    );
    let last = fmt_num(x1);
    draw_text(
        &mut img,
        &last,
        (left + pw) as i64 - 8 * last.len() as i64,
        (top + ph + 8.0) as i64,
        [60, 60, 60],
    );
    let to_px = |(x, y): (f64, f64)| {
        (
            left + (x - x0) / (x1 - x0) * pw,
            top + (y1 - y) / (y1 - y0) * ph,
        )
    };
    for (s, color) in series {
        let pts: Vec<(f64, f64)> = s
            .iter()
            .copied()
            .filter(|p| p.1.is_finite())
            .map(to_px)
            .collect();
        for w in pts.windows(2) {
            line(&mut img, w[0], w[1], *color);
        }
        if pts.len() == 1 {
            line(&mut img, pts[0], pts[0], *color);
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_draws_the_series_inside_the_frame() {
        let s: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, (50 - i) as f64)).collect();
        let img = line_plot(&[(&s, [0, 0, 255])], 300, 200);
        let blue = img.pixels().filter(|p| p.0 == [0, 0, 255]).count();
        assert!(blue > 100, "{blue} blue pixels");
        // The first point (max y) is near the top-left of the plot area.
        assert_eq!(img.get_pixel(70, 10).0, [0, 0, 255]);
    }
}
