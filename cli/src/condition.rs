//! The `--condition` grammar of `route create|update`: a compact text form of a routing
//! condition (DESIGN §5), parsed into the proto `Condition`.

use myagent_proto::v1::Condition;

/// Shown under `route create --help` and `route update --help`.
pub const CONDITION_HELP: &str = "\
CONDITION grammar (all conditions of a rule must match):
  FIELD=VALUE            equals          header.x-user-tier=vip
  FIELD==VALUE           equals
  FIELD!=VALUE           not_equals      query.region!=eu
  FIELD*=VALUE           contains        header.user-agent*=Mobile
  FIELD^=VALUE           starts_with     path^=/ws
  FIELD$=VALUE           ends_with       header.host$=.example.com
  FIELD~=REGEX           regex           header.x-user-id~=^[0-9]+$
  FIELD in A|B|C         in              query.lang in en|de
  FIELD not_in A|B       not_in          header.x-tier not_in free|trial
  client_ip cidr NET     cidr            client_ip cidr 10.0.0.0/8,192.168.0.0/16
  FIELD exists           exists          header.authorization exists
  FIELD not_exists       not_exists
  FIELD OPERATOR VALUE   any operator by name: equals not_equals contains starts_with
                         ends_with regex in not_in exists not_exists cidr
FIELD is header.<name> (case-insensitive), query.<name>, client_ip or path. `in`/`not_in`
lists are separated by `|` (or `,`). Quote the whole condition for the shell.

Example:
  myagent-manager route create vip-routing --condition \"header.x-user-tier=vip\" \\
      --target-tag high-performance --strategy least_connections";

const OPERATORS: [&str; 11] = [
    "equals",
    "not_equals",
    "contains",
    "starts_with",
    "ends_with",
    "regex",
    "in",
    "not_in",
    "exists",
    "not_exists",
    "cidr",
];

/// clap value parser.
pub fn parse_arg(s: &str) -> Result<Condition, String> {
    parse(s)
}

/// Parses one condition; the error names what is wrong.
pub fn parse(input: &str) -> Result<Condition, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty condition".into());
    }
    if let Some(c) = parse_word_form(s)? {
        return Ok(c);
    }
    parse_symbol_form(s)
}

/// `FIELD OPERATOR [VALUE]`, with the operator spelled out (`not in`/`not exists` accepted).
fn parse_word_form(s: &str) -> Result<Option<Condition>, String> {
    let Some((field, rest)) = s.split_once(char::is_whitespace) else {
        return Ok(None);
    };
    if field.contains('=') {
        return Ok(None);
    }
    let rest = rest.trim_start();
    let (op_word, value) = match rest.split_once(char::is_whitespace) {
        Some((op, v)) => (op, v.trim()),
        None => (rest, ""),
    };
    let (operator, value) = match (op_word, value) {
        ("not", v) => {
            let (second, v2) = match v.split_once(char::is_whitespace) {
                Some((a, b)) => (a, b.trim()),
                None => (v, ""),
            };
            match second {
                "in" => ("not_in", v2),
                "exists" => ("not_exists", v2),
                _ => return Ok(None),
            }
        }
        (op, v) if OPERATORS.contains(&op) => (op, v),
        _ => return Ok(None),
    };
    build(field, operator, value).map(Some)
}

/// `FIELD<op>VALUE` with `=`, `==`, `!=`, `*=`, `^=`, `$=`, `~=`.
fn parse_symbol_form(s: &str) -> Result<Condition, String> {
    let Some((left, value)) = s.split_once('=') else {
        return Err(format!(
            "cannot parse condition `{s}`: expected FIELD=VALUE, FIELD OPERATOR VALUE or FIELD exists"
        ));
    };
    let (field, operator, value) = match left.chars().last() {
        Some('!') => (&left[..left.len() - 1], "not_equals", value),
        Some('*') => (&left[..left.len() - 1], "contains", value),
        Some('^') => (&left[..left.len() - 1], "starts_with", value),
        Some('$') => (&left[..left.len() - 1], "ends_with", value),
        Some('~') => (&left[..left.len() - 1], "regex", value),
        _ => (left, "equals", value.strip_prefix('=').unwrap_or(value)),
    };
    // Spaces around the operator are layout (`FIELD = VALUE`), not part of the value.
    build(field.trim(), operator, value.trim_start())
}

fn build(field: &str, operator: &str, value: &str) -> Result<Condition, String> {
    check_field(field)?;
    let mut c = Condition {
        field: field.to_string(),
        operator: operator.to_string(),
        value: String::new(),
        values: Vec::new(),
    };
    match operator {
        "exists" | "not_exists" => {
            if !value.is_empty() {
                return Err(format!("`{operator}` takes no value (got `{value}`)"));
            }
        }
        "in" | "not_in" => {
            let values: Vec<String> = value
                .split(['|', ','])
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from)
                .collect();
            if values.is_empty() {
                return Err(format!(
                    "`{operator}` needs a list of values, e.g. `{field} {operator} a|b`"
                ));
            }
            c.values = values;
        }
        "cidr" => {
            if value.is_empty() {
                return Err("`cidr` needs a network, e.g. `client_ip cidr 10.0.0.0/8`".into());
            }
            c.value = value.to_string();
        }
        _ => c.value = value.to_string(),
    }
    Ok(c)
}

fn check_field(field: &str) -> Result<(), String> {
    let ok = match field {
        "client_ip" | "path" => true,
        f => ["header.", "query."].iter().any(|p| {
            f.strip_prefix(p)
                .is_some_and(|name| !name.is_empty() && !name.contains(char::is_whitespace))
        }),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "unknown condition field `{field}`: use header.<name>, query.<name>, client_ip or path"
        ))
    }
}

/// Renders a condition back in the grammar above (for tables).
pub fn render(c: &Condition) -> String {
    let symbol = match c.operator.as_str() {
        "equals" => Some("="),
        "not_equals" => Some("!="),
        "contains" => Some("*="),
        "starts_with" => Some("^="),
        "ends_with" => Some("$="),
        "regex" => Some("~="),
        _ => None,
    };
    match symbol {
        Some(sym) => format!("{}{}{}", c.field, sym, c.value),
        None => match c.operator.as_str() {
            "exists" | "not_exists" => format!("{} {}", c.field, c.operator),
            "in" | "not_in" if !c.values.is_empty() => {
                format!("{} {} {}", c.field, c.operator, c.values.join("|"))
            }
            op => format!("{} {} {}", c.field, op, c.value),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> (String, String, String, Vec<String>) {
        let c = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (c.field, c.operator, c.value, c.values)
    }

    #[test]
    fn seed_example() {
        assert_eq!(
            p("header.x-user-tier=vip"),
            (
                "header.x-user-tier".into(),
                "equals".into(),
                "vip".into(),
                vec![]
            )
        );
    }

    #[test]
    fn symbol_operators() {
        assert_eq!(p("query.a==b").1, "equals");
        assert_eq!(p("query.a==b").2, "b");
        assert_eq!(p("query.a!=b").1, "not_equals");
        assert_eq!(p("header.ua*=Mobile").1, "contains");
        assert_eq!(p("path^=/ws").1, "starts_with");
        assert_eq!(p("header.host$=.example.com").2, ".example.com");
        let (_, op, v, _) = p("header.x-id~=^[0-9]+=$");
        assert_eq!((op.as_str(), v.as_str()), ("regex", "^[0-9]+=$"));
        assert_eq!(p("query.q=a b c").2, "a b c");
        // Spaces around the operator are not part of the field or the value.
        assert_eq!(p("header.x-user-tier = vip"), p("header.x-user-tier=vip"));
        assert_eq!(p("query.a != b").2, "b");
        assert_eq!(p("query.a == b").2, "b");
    }

    #[test]
    fn word_operators() {
        assert_eq!(p("query.lang in en|de").3, vec!["en", "de"]);
        assert_eq!(p("query.lang in en,de").3, vec!["en", "de"]);
        assert_eq!(p("query.lang not in en").1, "not_in");
        assert_eq!(p("query.lang not_in en").1, "not_in");
        assert_eq!(p("client_ip cidr 10.0.0.0/8").2, "10.0.0.0/8");
        assert_eq!(p("header.authorization exists").1, "exists");
        assert_eq!(p("header.authorization not exists").1, "not_exists");
        assert_eq!(p("path regex ^/a b$").2, "^/a b$");
        assert_eq!(p("header.x equals a=b").2, "a=b");
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(parse("").is_err());
        assert!(parse("foo=bar")
            .unwrap_err()
            .contains("unknown condition field"));
        assert!(parse("header.=x").is_err());
        assert!(parse("header.x").unwrap_err().contains("expected"));
        assert!(parse("header.x in").is_err());
        assert!(parse("header.x exists now").is_err());
    }

    #[test]
    fn render_round_trips() {
        for s in [
            "header.x-user-tier=vip",
            "query.a!=b",
            "path^=/ws",
            "query.lang in en|de",
            "client_ip cidr 10.0.0.0/8",
            "header.a exists",
            "header.a~=^x$",
        ] {
            let c = parse(s).unwrap();
            assert_eq!(parse(&render(&c)).unwrap(), c, "{s}");
        }
    }
}
