//! The one table shape of every `tek` listing (`image list`, `job list`, `data list`, `status`,
//! `bays`, `audit show`, ...): a header row in capitals, columns aligned by
//! [`comfy_table`], two spaces between them, numbers right-aligned, no borders, no trailing
//! blanks. Never wrapped or cut to the terminal's width (the crate's tty feature is off), so a
//! row reads the same on screen, in a pipe and in `grep`.
//!
//! ```text
//! IMAGE       SIZE      CREATED                  SIGNATURE
//! demo@1      64.0 MiB  2026-12-02 04:51:44 UTC  valid (maint)
//! ```

use comfy_table::{CellAlignment, ContentArrangement, presets};

/// A table being filled: headers first, then rows of cells as text.
pub struct Table {
    inner: comfy_table::Table,
    right: Vec<usize>,
}

impl Table {
    /// A table with these column headers (written as given; the house style is capitals).
    pub fn new(headers: &[&str]) -> Table {
        let mut inner = comfy_table::Table::new();
        inner
            .load_preset(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(headers.to_vec());
        Table {
            inner,
            right: Vec::new(),
        }
    }

    /// Right-aligns the columns at these indices (counts and sizes), header included.
    pub fn right_aligned(mut self, columns: &[usize]) -> Table {
        self.right.extend_from_slice(columns);
        self
    }

    /// Adds a row; a row with fewer cells than headers leaves the rest empty.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        self.inner.add_row(cells);
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The table as text, every line ending in a newline.
    pub fn render(mut self) -> String {
        let n = self.inner.column_count();
        for (i, col) in self.inner.column_iter_mut().enumerate() {
            // No padding before the first column, two spaces between columns (trimmed at the
            // end of a line by `trim_fmt`).
            col.set_padding((0, if i + 1 == n { 0 } else { 2 }));
            if self.right.contains(&i) {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
        let mut text = self.inner.trim_fmt();
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_aligned_columns_and_right_aligned_numbers() {
        let mut t = Table::new(&["IMAGE", "SIZE", "STATE"]).right_aligned(&[1]);
        t.row(["a@1", "512 B", "ok"]);
        t.row(["longer-name@2024.06", "64.0 MiB", "incomplete"]);
        assert_eq!(
            t.render(),
            "IMAGE                    SIZE  STATE\n\
             a@1                     512 B  ok\n\
             longer-name@2024.06  64.0 MiB  incomplete\n"
        );
    }

    #[test]
    fn no_trailing_blanks_and_short_rows() {
        let mut t = Table::new(&["A", "B"]);
        t.row(["x"]);
        let text = t.render();
        assert!(text.lines().all(|l| !l.ends_with(' ')), "{text:?}");
        assert_eq!(text, "A  B\nx\n");
    }
}
