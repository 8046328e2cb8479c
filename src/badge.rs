//! SVG status badges in the shields.io "flat" style, rendered in-process.
//! Pure: text in, SVG out. Widths come from Verdana 11px advance widths, so
//! labels fit without a font on the server.

/// Advance widths of Verdana at 11px for printable ASCII (32..=126), in
/// tenths of a pixel, from the font's metrics (units per em 2048).
const WIDTHS: [u16; 95] = [
    39, 43, 50, 90, 70, 121, 80, 29, 50, 50, 70, 90, 40, 50, 40, 50, // ' ' .. '/'
    70, 70, 70, 70, 70, 70, 70, 70, 70, 70, 50, 50, 90, 90, 90, 60, // '0' .. '?'
    110, 75, 75, 77, 85, 70, 63, 85, 84, 46, 50, 76, 61, 93, 82, 87, // '@' .. 'O'
    66, 87, 77, 75, 68, 81, 75, 109, 75, 68, 75, 50, 50, 50, 90, 70, // 'P' .. '_'
    70, 66, 68, 57, 68, 65, 39, 68, 69, 30, 38, 65, 30, 106, 69, 66, // '`' .. 'o'
    68, 68, 47, 57, 43, 69, 65, 89, 65, 65, 58, 70, 50, 70, 90, // 'p' .. '~'
];

/// Width of `text` in pixels at Verdana 11px.
pub fn text_width(text: &str) -> f64 {
    text.chars()
        .map(|c| {
            let i = c as usize;
            if (32..=126).contains(&i) {
                WIDTHS[i - 32] as f64 / 10.0
            } else {
                // Wide glyphs (CJK, symbols): about an em.
                11.0
            }
        })
        .sum()
}

/// Colours as shields.io names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Green,
    Yellow,
    Orange,
    Red,
    Grey,
    Blue,
}

impl Color {
    fn hex(self) -> &'static str {
        match self {
            Color::Green => "#4c1",
            Color::Yellow => "#dfb317",
            Color::Orange => "#fe7d37",
            Color::Red => "#e05d44",
            Color::Grey => "#9f9f9f",
            Color::Blue => "#007ec6",
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// A two-part badge: grey label on the left, coloured message on the right.
pub fn render(label: &str, message: &str, color: Color) -> String {
    // 5px padding either side of each text, as shields does.
    let lw = (text_width(label) + 10.0).round() as u32;
    let mw = (text_width(message) + 10.0).round() as u32;
    let w = lw + mw;
    // Text is drawn at 10x scale for sub-pixel positioning.
    let lx = lw * 5;
    let mx = lw * 10 + mw * 5;
    let ltl = (text_width(label) * 10.0).round() as u32;
    let mtl = (text_width(message) * 10.0).round() as u32;
    let (label, message) = (escape(label), escape(message));
    let fill = color.hex();
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="20" role="img" aria-label="{label}: {message}"><title>{label}: {message}</title><linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient><clipPath id="r"><rect width="{w}" height="20" rx="3" fill="#fff"/></clipPath><g clip-path="url(#r)"><rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{mw}" height="20" fill="{fill}"/><rect width="{w}" height="20" fill="url(#s)"/></g><g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" text-rendering="geometricPrecision" font-size="110"><text aria-hidden="true" x="{lx}" y="150" fill="#010101" fill-opacity=".3" transform="scale(.1)" textLength="{ltl}">{label}</text><text x="{lx}" y="140" transform="scale(.1)" fill="#fff" textLength="{ltl}">{label}</text><text aria-hidden="true" x="{mx}" y="150" fill="#010101" fill-opacity=".3" transform="scale(.1)" textLength="{mtl}">{message}</text><text x="{mx}" y="140" transform="scale(.1)" fill="#fff" textLength="{mtl}">{message}</text></g></svg>"##
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_follow_the_text() {
        assert!(text_width("synced") < text_width("invalid config"));
        assert!(text_width("iiii") < text_width("mmmm"));
        // Verdana: 'm' is a little over 10px at 11px, 'i' about 3px.
        assert!((text_width("m") - 10.6).abs() < 0.5);
        assert!((text_width("i") - 3.0).abs() < 0.5);
    }

    #[test]
    fn badge_is_well_formed_and_sized() {
        let svg = render("fleet", "synced", Color::Green);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>"));
        let lw = (text_width("fleet") + 10.0).round() as u32;
        let mw = (text_width("synced") + 10.0).round() as u32;
        assert!(svg.contains(&format!("width=\"{}\"", lw + mw)), "{svg}");
        assert!(svg.contains("#4c1"));
        assert!(render("a<b", "x&y", Color::Red).contains("a&lt;b: x&amp;y"));
    }
}
