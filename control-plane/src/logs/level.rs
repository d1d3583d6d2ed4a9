//! Log levels and the parser that reads a level out of an agent's output line (DESIGN §4).

use serde::{Deserialize, Serialize};

/// Normalized level; ordered so that "this level and above" is `>=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    /// Accepts the usual spellings (`warning`, `err`, `critical`, `trace`, any case).
    pub fn parse(s: &str) -> Option<Level> {
        let s = s.trim().to_ascii_lowercase();
        Some(match s.as_str() {
            "trace" | "debug" | "dbg" => Level::Debug,
            "info" | "information" | "notice" => Level::Info,
            "warn" | "warning" => Level::Warn,
            "error" | "err" | "critical" | "crit" | "fatal" | "panic" | "alert" | "emerg" => {
                Level::Error
            }
            _ => return None,
        })
    }
}

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Stdout,
    Stderr,
    Manager,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Stdout => "stdout",
            Source::Stderr => "stderr",
            Source::Manager => "manager",
        }
    }
}

/// The level of an output line: a JSON `level` field, a `level=xxx` pair, or a leading level word
/// (`ERROR ...`, `[WARN] ...`, `WARNING:root:...`); otherwise stdout is info and stderr is warn.
pub fn detect(line: &str, source: Source) -> Level {
    from_json(line)
        .or_else(|| from_pair(line))
        .or_else(|| from_leading_word(line))
        .unwrap_or(match source {
            Source::Stderr => Level::Warn,
            Source::Stdout | Source::Manager => Level::Info,
        })
}

fn from_json(line: &str) -> Option<Level> {
    let t = line.trim_start();
    if !t.starts_with('{') {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(t).ok()?;
    let obj = v.as_object()?;
    ["level", "levelname", "severity", "lvl"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(|l| l.as_str()).and_then(Level::parse))
}

fn from_pair(line: &str) -> Option<Level> {
    let lower = line.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find("level=") {
        let at = from + pos;
        // `loglevel=` or `xlevel=` is not our key; the key must start a word.
        let starts_word = at == 0 || !lower.as_bytes()[at - 1].is_ascii_alphanumeric();
        let rest = &line[at + "level=".len()..];
        if starts_word {
            let value: String = rest
                .trim_start_matches(['"', '\''])
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            if let Some(l) = Level::parse(&value) {
                return Some(l);
            }
        }
        from = at + "level=".len();
    }
    None
}

fn from_leading_word(line: &str) -> Option<Level> {
    let t = line.trim_start().trim_start_matches('[');
    let word: String = t.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    // Only upper-case words count: "Error handling enabled" is prose, "ERROR boom" is a level.
    if word.is_empty() || word.chars().any(|c| c.is_ascii_lowercase()) {
        return None;
    }
    match word.as_str() {
        "ERROR" | "ERR" | "CRITICAL" | "FATAL" | "WARNING" | "WARN" | "INFO" | "DEBUG"
        | "TRACE" => Level::parse(&word),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_level_field() {
        assert_eq!(
            detect(r#"{"level":"ERROR","msg":"x"}"#, Source::Stdout),
            Level::Error
        );
        assert_eq!(
            detect(r#"{"levelname":"warning"}"#, Source::Stdout),
            Level::Warn
        );
        assert_eq!(detect(r#"{"msg":"no level"}"#, Source::Stderr), Level::Warn);
    }

    #[test]
    fn level_pair() {
        assert_eq!(
            detect("ts=1 level=debug msg=hi", Source::Stderr),
            Level::Debug
        );
        assert_eq!(detect("level=\"error\" boom", Source::Stdout), Level::Error);
        assert_eq!(detect("loglevel=error", Source::Stdout), Level::Info);
    }

    #[test]
    fn leading_word() {
        assert_eq!(
            detect("ERROR something broke", Source::Stdout),
            Level::Error
        );
        assert_eq!(detect("WARNING:root:careful", Source::Stdout), Level::Warn);
        assert_eq!(detect("[INFO] ready", Source::Stderr), Level::Info);
        assert_eq!(detect("  DEBUG x", Source::Stdout), Level::Debug);
        assert_eq!(detect("Error handling is on", Source::Stdout), Level::Info);
        assert_eq!(detect("ERRORS happen", Source::Stdout), Level::Info);
    }

    #[test]
    fn defaults_by_source() {
        assert_eq!(detect("plain", Source::Stdout), Level::Info);
        assert_eq!(detect("plain", Source::Stderr), Level::Warn);
    }

    #[test]
    fn ordering_is_severity() {
        assert!(
            Level::Error > Level::Warn && Level::Warn > Level::Info && Level::Info > Level::Debug
        );
    }
}
