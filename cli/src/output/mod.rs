//! What a command prints: the same data as REST-shaped JSON (`--output json`) or as aligned
//! tables (`--output table`). Renderers are pure functions of the proto messages, so they are
//! unit-tested without a server.

pub mod json;
pub mod table;
pub mod text;

use std::io::Write;

use serde_json::Value;

use crate::args::OutputFormat;
use crate::error::Result;

/// One command's result in both forms.
#[derive(Debug)]
pub struct Rendered {
    pub json: Value,
    pub table: String,
}

impl Rendered {
    pub fn new(json: Value, table: String) -> Self {
        Rendered { json, table }
    }

    /// The text for `format`, ending with a newline.
    pub fn text(&self, format: OutputFormat) -> Result<String> {
        Ok(match format {
            OutputFormat::Json => format!("{}\n", serde_json::to_string_pretty(&self.json)?),
            OutputFormat::Table => {
                let mut t = self.table.clone();
                if !t.ends_with('\n') {
                    t.push('\n');
                }
                t
            }
        })
    }

    pub fn print(&self, format: OutputFormat) -> Result<()> {
        let text = self.text(format)?;
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) is not an error worth reporting.
        match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => Ok(r?),
        }
    }
}
