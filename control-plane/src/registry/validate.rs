//! Validation of registrations and configuration patches. Every error is `INVALID_REQUEST`
//! naming the offending field as a dotted path (`config.max_sessions`, `tags[2]`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::ServiceConfig;

pub const MAX_NAME_LEN: usize = 63;
pub const MAX_TAG_LEN: usize = 64;
pub const MAX_TAGS: usize = 32;
pub const MAX_DESCRIPTION_LEN: usize = 1024;
pub const MAX_HOST_LEN: usize = 253;
const MAX_ENV: usize = 256;
const MAX_ARGS: usize = 256;
const MAX_ARG_LEN: usize = 4096;

/// A partial `ServiceConfig`: `None` keeps the current (or default) value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigPatch {
    pub max_sessions: Option<u32>,
    pub session_timeout: Option<u32>,
    pub auto_restart: Option<bool>,
    pub health_check_enabled: Option<bool>,
    pub env: Option<BTreeMap<String, String>>,
    pub args: Option<Vec<String>>,
    /// `Some("")` clears it.
    pub working_dir: Option<String>,
    pub proxy_metadata: Option<bool>,
    pub weight: Option<u32>,
    pub health_check_interval: Option<f64>,
    pub health_check_timeout: Option<f64>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
    pub startup_timeout: Option<f64>,
    pub stop_grace_period: Option<f64>,
    pub max_restarts: Option<u32>,
    pub restart_window: Option<f64>,
    pub drain_timeout: Option<f64>,
    pub flap_stable_checks: Option<u32>,
}

impl ConfigPatch {
    /// Applies the patch to `cfg` and validates the merged result. `prefix` is prepended to
    /// field names in errors (`"config."` for a registration, `""` for a config update, whose
    /// body is the config itself).
    pub fn apply(&self, cfg: &mut ServiceConfig, prefix: &str) -> Result<()> {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { cfg.$f = v.clone(); } )* };
        }
        set!(
            max_sessions,
            session_timeout,
            auto_restart,
            health_check_enabled,
            env,
            args,
            proxy_metadata,
            weight,
            health_check_interval,
            health_check_timeout,
            healthy_threshold,
            unhealthy_threshold,
            startup_timeout,
            stop_grace_period,
            max_restarts,
            restart_window,
            drain_timeout,
            flap_stable_checks
        );
        if let Some(dir) = &self.working_dir {
            cfg.working_dir = if dir.trim().is_empty() {
                None
            } else {
                Some(resolve_dir(dir, &format!("{prefix}working_dir"))?)
            };
        }
        // A shorter interval without an explicit timeout pulls the timeout down with it, so
        // `{"health_check_interval": 1}` alone is accepted; an explicit conflict is an error.
        if self.health_check_timeout.is_none()
            && cfg.health_check_timeout > cfg.health_check_interval
        {
            cfg.health_check_timeout = cfg.health_check_interval;
        }
        validate_config(cfg, prefix)
    }
}

/// Checks every bound of a complete configuration (bounds documented in services.proto).
pub fn validate_config(cfg: &ServiceConfig, prefix: &str) -> Result<()> {
    let f = |name: &str| format!("{prefix}{name}");
    range_u32(cfg.max_sessions, 1, 1_000_000, &f("max_sessions"))?;
    range_u32(cfg.session_timeout, 1, 604_800, &f("session_timeout"))?;
    range_u32(cfg.weight, 1, 1000, &f("weight"))?;
    range_f64(
        cfg.health_check_interval,
        0.1,
        3600.0,
        &f("health_check_interval"),
    )?;
    range_f64(
        cfg.health_check_timeout,
        0.05,
        600.0,
        &f("health_check_timeout"),
    )?;
    if cfg.health_check_timeout > cfg.health_check_interval {
        return Err(Error::invalid(
            f("health_check_timeout"),
            format!(
                "health_check_timeout ({}s) must not exceed health_check_interval ({}s)",
                cfg.health_check_timeout, cfg.health_check_interval
            ),
        ));
    }
    range_u32(cfg.healthy_threshold, 1, 100, &f("healthy_threshold"))?;
    range_u32(cfg.unhealthy_threshold, 1, 100, &f("unhealthy_threshold"))?;
    range_f64(cfg.startup_timeout, 0.1, 3600.0, &f("startup_timeout"))?;
    range_f64(cfg.stop_grace_period, 0.0, 3600.0, &f("stop_grace_period"))?;
    range_u32(cfg.max_restarts, 0, 10_000, &f("max_restarts"))?;
    range_f64(cfg.restart_window, 1.0, 86_400.0, &f("restart_window"))?;
    range_f64(cfg.drain_timeout, 0.0, 3600.0, &f("drain_timeout"))?;
    range_u32(cfg.flap_stable_checks, 0, 100, &f("flap_stable_checks"))?;
    if cfg.env.len() > MAX_ENV {
        return Err(Error::invalid(
            f("env"),
            format!("at most {MAX_ENV} environment variables"),
        ));
    }
    for (k, v) in &cfg.env {
        let valid_key = !k.is_empty()
            && k.len() <= 256
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(Error::invalid(
                format!("{prefix}env.{k}"),
                format!("invalid environment variable name '{k}' (letters, digits, '_'; not starting with a digit)"),
            ));
        }
        if v.contains('\0') || v.len() > 32 * 1024 {
            return Err(Error::invalid(
                format!("{prefix}env.{k}"),
                "environment value must not contain NUL and must be at most 32 KiB",
            ));
        }
    }
    if cfg.args.len() > MAX_ARGS {
        return Err(Error::invalid(
            f("args"),
            format!("at most {MAX_ARGS} arguments"),
        ));
    }
    for (i, a) in cfg.args.iter().enumerate() {
        if a.contains('\0') || a.len() > MAX_ARG_LEN {
            return Err(Error::invalid(
                format!("{prefix}args[{i}]"),
                "argument must not contain NUL and must be at most 4096 bytes",
            ));
        }
    }
    Ok(())
}

fn range_u32(v: u32, min: u32, max: u32, field: &str) -> Result<()> {
    if v < min || v > max {
        return Err(Error::invalid(
            field,
            format!("{field} must be between {min} and {max} (got {v})"),
        ));
    }
    Ok(())
}

fn range_f64(v: f64, min: f64, max: f64, field: &str) -> Result<()> {
    if !v.is_finite() || v < min || v > max {
        return Err(Error::invalid(
            field,
            format!("{field} must be between {min} and {max} (got {v})"),
        ));
    }
    Ok(())
}

/// Service names: 1–63 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit (DESIGN §9), and
/// never shaped like a UUID, so an id lookup can never be shadowed by a name.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("name", "name is required"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            "name",
            format!("name must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    let first_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !first_ok
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(Error::invalid(
            "name",
            format!("invalid name '{name}': use letters, digits, '.', '_' and '-', starting with a letter or digit"),
        ));
    }
    if uuid::Uuid::parse_str(name).is_ok() {
        return Err(Error::invalid(
            "name",
            "name must not be a UUID (UUIDs are service ids)",
        ));
    }
    Ok(())
}

/// Returns the host to store: trimmed, `localhost` when empty.
pub fn validate_host(host: &str) -> Result<String> {
    let host = host.trim();
    if host.is_empty() {
        return Ok("localhost".to_string());
    }
    if host.len() > MAX_HOST_LEN
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'))
    {
        return Err(Error::invalid("host", format!("invalid host '{host}'")));
    }
    Ok(host.to_string())
}

pub fn validate_port(port: u32) -> Result<u16> {
    match u16::try_from(port) {
        Ok(p) if p >= 1 => Ok(p),
        _ if port == 0 => Err(Error::invalid("port", "port is required (1-65535)")),
        _ => Err(Error::invalid(
            "port",
            format!("port must be between 1 and 65535 (got {port})"),
        )),
    }
}

pub fn validate_description(description: &str) -> Result<()> {
    if description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(Error::invalid(
            "description",
            format!("description must be at most {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    Ok(())
}

/// Tags (also rule target tags): each 1–64 characters without whitespace, control characters or
/// commas (the CLI and query strings use comma lists); at most 32; duplicates are dropped.
pub fn validate_tags(tags: &[String], field: &str) -> Result<Vec<String>> {
    if tags.len() > MAX_TAGS {
        return Err(Error::invalid(field, format!("at most {MAX_TAGS} tags")));
    }
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for (i, t) in tags.iter().enumerate() {
        let t = t.trim();
        let ok = !t.is_empty()
            && t.chars().count() <= MAX_TAG_LEN
            && !t
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ',');
        if !ok {
            return Err(Error::invalid(
                format!("{field}[{i}]"),
                format!("invalid tag '{t}': 1-{MAX_TAG_LEN} characters, no spaces or commas"),
            ));
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

/// Resolves a directory to an absolute path (relative to the control plane's working
/// directory) and checks it exists.
fn resolve_dir(dir: &str, field: &str) -> Result<String> {
    let p = absolute(Path::new(dir), None);
    if !p.is_dir() {
        return Err(Error::invalid(
            field,
            format!("directory '{dir}' does not exist"),
        ));
    }
    Ok(p.to_string_lossy().into_owned())
}

/// Resolves `agent_factory_path` to an absolute, existing file that can be launched: a `.py`
/// file (run with python3) or an executable. A relative path is taken relative to
/// `config.working_dir` when set, else to the control plane's working directory.
pub fn resolve_factory_path(path: &str, working_dir: Option<&str>) -> Result<String> {
    const FIELD: &str = "agent_factory_path";
    if path.contains('\0') {
        return Err(Error::invalid(FIELD, "path must not contain NUL"));
    }
    let p = absolute(Path::new(path), working_dir.map(Path::new));
    let meta = std::fs::metadata(&p).map_err(|_| {
        Error::invalid(
            FIELD,
            format!("agent factory '{path}' does not exist ({})", p.display()),
        )
    })?;
    if !meta.is_file() {
        return Err(Error::invalid(
            FIELD,
            format!("agent factory '{path}' is not a file"),
        ));
    }
    let is_py = p.extension().is_some_and(|e| e == "py");
    if !is_py {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(Error::invalid(
                FIELD,
                format!("agent factory '{path}' is neither a .py file nor executable"),
            ));
        }
    }
    Ok(p.to_string_lossy().into_owned())
}

fn absolute(p: &Path, base: Option<&Path>) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        let base = base
            .map(Path::to_path_buf)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_default();
        base.join(p)
    };
    // canonicalize resolves `..` and symlinks when the path exists; otherwise keep the join.
    std::fs::canonicalize(&joined).unwrap_or(joined)
}

/// Host identity for port conflicts: every spelling of "this machine" is one host.
pub fn normalize_host(host: &str) -> String {
    let h = host
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    match h.as_str() {
        "localhost" | "::1" | "0.0.0.0" | "::" | "" => "local".to_string(),
        _ if h.starts_with("127.") => "local".to_string(),
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(Error::InvalidRequest { field, .. }) => field,
            other => panic!("expected INVALID_REQUEST, got {other:?}"),
        }
    }

    #[test]
    fn names() {
        for ok in ["weather-agent", "a", "A1.b_c-d", &"x".repeat(63)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "-a",
            ".a",
            "a b",
            "a/b",
            "ü",
            &"x".repeat(64),
            "6f1c2a0e-8d2b-4a51-9d7e-0a1b2c3d4e5f",
        ] {
            assert_eq!(field_of(validate_name(bad)), "name", "{bad}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(validate_port(8081).unwrap(), 8081);
        assert_eq!(field_of(validate_port(0)), "port");
        assert_eq!(field_of(validate_port(70000)), "port");
    }

    #[test]
    fn tags_are_deduplicated_and_bounded() {
        let t = validate_tags(&["a".into(), "b".into(), "a".into()], "tags").unwrap();
        assert_eq!(t, vec!["a", "b"]);
        assert_eq!(
            field_of(validate_tags(&["ok".into(), "".into()], "tags")),
            "tags[1]"
        );
        assert_eq!(field_of(validate_tags(&["a,b".into()], "tags")), "tags[0]");
        let many: Vec<String> = (0..33).map(|i| i.to_string()).collect();
        assert_eq!(field_of(validate_tags(&many, "tags")), "tags");
    }

    #[test]
    fn config_bounds_name_the_field() {
        let cases: Vec<(ConfigPatch, &str)> = vec![
            (
                ConfigPatch {
                    max_sessions: Some(0),
                    ..Default::default()
                },
                "config.max_sessions",
            ),
            (
                ConfigPatch {
                    session_timeout: Some(604_801),
                    ..Default::default()
                },
                "config.session_timeout",
            ),
            (
                ConfigPatch {
                    weight: Some(1001),
                    ..Default::default()
                },
                "config.weight",
            ),
            (
                ConfigPatch {
                    health_check_interval: Some(0.0),
                    ..Default::default()
                },
                "config.health_check_interval",
            ),
            (
                ConfigPatch {
                    health_check_interval: Some(f64::NAN),
                    ..Default::default()
                },
                "config.health_check_interval",
            ),
            (
                ConfigPatch {
                    health_check_interval: Some(2.0),
                    health_check_timeout: Some(3.0),
                    ..Default::default()
                },
                "config.health_check_timeout",
            ),
            (
                ConfigPatch {
                    working_dir: Some("/definitely/not/here".into()),
                    ..Default::default()
                },
                "config.working_dir",
            ),
        ];
        for (patch, field) in cases {
            let mut cfg = ServiceConfig::default();
            assert_eq!(field_of(patch.apply(&mut cfg, "config.")), field);
        }
    }

    #[test]
    fn shorter_interval_pulls_the_default_timeout_down() {
        let mut cfg = ServiceConfig::default();
        ConfigPatch {
            health_check_interval: Some(1.0),
            ..Default::default()
        }
        .apply(&mut cfg, "")
        .unwrap();
        assert_eq!(cfg.health_check_timeout, 1.0);
    }

    #[test]
    fn factory_paths_resolve_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let py = dir.path().join("agent.py");
        std::fs::write(&py, "print()").unwrap();
        let plain = dir.path().join("data.txt");
        std::fs::write(&plain, "x").unwrap();
        let wd = dir.path().to_str().unwrap();
        let resolved = resolve_factory_path("agent.py", Some(wd)).unwrap();
        assert!(Path::new(&resolved).is_absolute());
        assert_eq!(
            field_of(resolve_factory_path("missing.py", Some(wd))),
            "agent_factory_path"
        );
        assert_eq!(
            field_of(resolve_factory_path("data.txt", Some(wd))),
            "agent_factory_path"
        );
    }

    #[test]
    fn hosts_normalize() {
        assert_eq!(normalize_host("localhost"), normalize_host("127.0.0.1"));
        assert_ne!(normalize_host("10.0.0.1"), normalize_host("localhost"));
    }
}
