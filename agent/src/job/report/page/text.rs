//! Fitting values onto the one-page report: lists capped, long paths cut in the middle.

use super::LIST_MAX;

/// At most [`LIST_MAX`] items joined, and how many more there are ("none" for none): a
/// dataset of a thousand fifos must not push the page onto a second sheet.
pub(super) fn capped(items: &[String]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    let mut s = items
        .iter()
        .take(LIST_MAX)
        .map(|i| fit(i))
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > LIST_MAX {
        s += &format!(
            "; and {} more (see the report's JSON)",
            items.len() - LIST_MAX
        );
    }
    s
}

/// Longest value of a list line, in characters (a path can be 4096 bytes; the JSON has it all).
const ITEM_MAX: usize = 90;

/// `s` cut to [`ITEM_MAX`] characters in the middle, where a path's least telling part is:
/// `Users/ann/Documents/…/report:2024.docx`.
pub(crate) fn fit(s: &str) -> String {
    fit_to(s, ITEM_MAX)
}

/// Longest failure reason in the outcome sentence: the reason is what the reader needs, so it
/// is kept whole (wrapping over lines) unless a hostile or runaway text (a 4 KiB path) would
/// push the page past one sheet; the job's JSON keeps it in full.
pub(crate) const REASON_MAX: usize = 480;

/// [`fit`] with another limit.
pub(crate) fn fit_to(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max / 2 - 1).collect();
    let tail: String = s.chars().skip(n - max / 2).collect();
    format!("{head}…{tail}")
}
