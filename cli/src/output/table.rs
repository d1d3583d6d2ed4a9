//! Aligned plain-text tables and key/value blocks for `--output table`.

/// A table with a header row; columns are padded to their widest cell (by characters, so
/// CJK rule names stay readable) and separated by two spaces.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I, S>(header: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(width(c));
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = r.get(i).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                if i + 1 < cols {
                    line.push_str(&" ".repeat(w - width(cell) + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Display width: East Asian wide characters take two columns.
pub fn width(s: &str) -> usize {
    s.chars()
        .map(|c| {
            let cp = c as u32;
            let wide = (0x1100..=0x115F).contains(&cp)
                || (0x2E80..=0xA4CF).contains(&cp)
                || (0xAC00..=0xD7A3).contains(&cp)
                || (0xF900..=0xFAFF).contains(&cp)
                || (0xFE30..=0xFE4F).contains(&cp)
                || (0xFF00..=0xFF60).contains(&cp)
                || (0xFFE0..=0xFFE6).contains(&cp)
                || (0x1F300..=0x1FAFF).contains(&cp)
                || (0x20000..=0x3FFFD).contains(&cp);
            if wide {
                2
            } else {
                1
            }
        })
        .sum()
}

/// `key:  value` lines under an optional section title, keys aligned.
#[derive(Debug, Default)]
pub struct Fields {
    title: Option<String>,
    items: Vec<(String, String)>,
}

impl Fields {
    pub fn new(title: Option<&str>) -> Self {
        Fields {
            title: title.map(String::from),
            items: Vec::new(),
        }
    }

    pub fn add(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.items.push((key.to_string(), value.into()));
        self
    }

    pub fn render(&self) -> String {
        let indent = if self.title.is_some() { "  " } else { "" };
        let w = self.items.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
        let mut out = String::new();
        if let Some(t) = &self.title {
            out.push_str(t);
            out.push_str(":\n");
        }
        for (k, v) in &self.items {
            // An empty key continues the previous item on a new line.
            let line = if k.is_empty() {
                format!("{indent}{}{v}", " ".repeat(w + 3))
            } else {
                format!("{indent}{k}:{}{v}", " ".repeat(w - width(k) + 2))
            };
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `-` for empty cells.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut t = Table::new(["NAME", "STATUS"]);
        t.row(["weather-agent", "running"]);
        t.row(["a", "stopped"]);
        assert_eq!(
            t.render(),
            "NAME           STATUS\nweather-agent  running\na              stopped\n"
        );
    }

    #[test]
    fn wide_characters_count_double() {
        let mut t = Table::new(["NAME", "P"]);
        t.row(["VIP用户路由", "10"]);
        t.row(["x", "1"]);
        assert_eq!(
            t.render(),
            "NAME         P\nVIP用户路由  10\nx            1\n"
        );
    }

    #[test]
    fn fields_align() {
        let mut f = Fields::new(Some("Health"));
        f.add("status", "healthy").add("last_check", "now");
        assert_eq!(
            f.render(),
            "Health:\n  status:      healthy\n  last_check:  now\n"
        );
    }
}
