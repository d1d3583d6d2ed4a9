//! Request extractors whose every rejection is the seed's error JSON with the offending field:
//! JSON bodies (serde_path_to_error names the field), query strings and path ids.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body. The body is parsed whatever its content type (curl's `-d` sends
/// `application/x-www-form-urlencoded`); it must be one JSON value and nothing else.
pub struct JsonBody<T>(pub T);

/// Like [`JsonBody`], but an empty body is `None` (restart, disconnect).
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid("body", "A JSON request body is required"));
        }
        parse_json(&bytes).map(JsonBody)
    }
}

impl<T, S> FromRequest<S> for OptionalJsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(None));
        }
        parse_json(&bytes).map(|v| OptionalJsonBody(Some(v)))
    }
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::invalid("body", "Request body is too large")
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        } else {
            ApiError::invalid("body", format!("Cannot read request body: {rejection}"))
        }
    })
}

/// Parses a JSON body; failures name the field (`config.max_sessions`, `conditions[0].operator`)
/// or `body` when the document itself is malformed.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde accepts a JSON array for a struct (by position); request bodies are objects only.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid(
            "body",
            "The request body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_error(&path, &inner)
    })?;
    de.end()
        .map_err(|e| ApiError::invalid("body", format!("Malformed JSON: {e}")))?;
    Ok(value)
}

fn json_error(path: &str, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::invalid("body", format!("Malformed JSON: {e}"))
        }
        Category::Data => data_error(path, &strip_position(&e.to_string())),
    }
}

/// Turns a serde data error at `path` into INVALID_REQUEST naming the most precise field.
fn data_error(path: &str, msg: &str) -> ApiError {
    let base = if path == "." || path == "?" { "" } else { path };
    // serde reports missing/unknown fields at the parent; the field name is in backticks.
    let named = ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| msg.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    let field = match named {
        Some(name) => join(base, name),
        None if base.is_empty() => "body".to_string(),
        None => base.to_string(),
    };
    ApiError::invalid(&field, format!("Invalid value for `{field}`: {msg}"))
}

fn join(base: &str, name: &str) -> String {
    // An unknown key's path already ends with the key itself; a missing one's is the parent.
    if base == name || base.ends_with(&format!(".{name}")) {
        return base.to_string();
    }
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}.{name}")
    }
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Query-string parameters; a bad value is INVALID_REQUEST naming the parameter. Unknown
/// parameters are ignored, as most HTTP APIs do.
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or("")).map(QueryParams)
    }
}

pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        let err = data_error(&path, &msg);
        let field = err
            .details
            .get("field")
            .and_then(|f| f.as_str())
            .unwrap_or("query")
            .to_string();
        let field = if field == "body" {
            "query".to_string()
        } else {
            field
        };
        ApiError::invalid(&field, format!("Invalid query parameter `{field}`: {msg}"))
    })
}

/// The `{id}` path segment: a service, rule or connection id, or a name.
pub struct IdPath(pub String);

impl<S> FromRequestParts<S> for IdPath
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid("id", format!("Invalid path parameter: {e}")))?;
        if id.trim().is_empty() {
            return Err(ApiError::invalid(
                "id",
                "The id in the path must not be empty",
            ));
        }
        Ok(IdPath(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        max_sessions: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        port: Option<u16>,
        config: Option<Inner>,
        items: Option<Vec<Inner>>,
    }

    fn field_of(body: &str) -> String {
        let e = parse_json::<Outer>(body.as_bytes()).unwrap_err();
        assert_eq!(e.code, "INVALID_REQUEST");
        e.details["field"].as_str().unwrap().to_string()
    }

    #[test]
    fn fields_are_named() {
        assert_eq!(field_of(r#"{"name": 1}"#), "name");
        assert_eq!(field_of(r#"{"port": 8080}"#), "name");
        assert_eq!(field_of(r#"{"name": "a", "port": 70000}"#), "port");
        assert_eq!(field_of(r#"{"name": "a", "bogus": 1}"#), "bogus");
        assert_eq!(field_of(r#"{"name": "a", "name": "b"}"#), "name");
        assert_eq!(
            field_of(r#"{"name": "a", "config": {"max_sessions": 1, "max_sessions": 2}}"#),
            "config.max_sessions"
        );
        assert_eq!(
            field_of(r#"{"name": "a", "config": {"max_sessions": -1}}"#),
            "config.max_sessions"
        );
        assert_eq!(
            field_of(r#"{"name": "a", "config": {"nope": 1}}"#),
            "config.nope"
        );
        assert_eq!(
            field_of(r#"{"name": "a", "items": [{}, {"max_sessions": "x"}]}"#),
            "items[1].max_sessions"
        );
    }

    #[test]
    fn malformed_documents_name_the_body() {
        assert_eq!(field_of(r#"{"name": "#), "body");
        assert_eq!(field_of(r#"[1,2]"#), "body");
        assert_eq!(field_of(r#"{"name": "a"} trailing"#), "body");
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Q {
        limit: Option<u32>,
        enabled: Option<bool>,
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let q: Q = parse_query("limit=5&enabled=true&other=x").unwrap();
        assert_eq!(q.limit, Some(5));
        let e = parse_query::<Q>("limit=-1").unwrap_err();
        assert_eq!(e.details["field"], "limit");
        let e = parse_query::<Q>("enabled=maybe").unwrap_err();
        assert_eq!(e.details["field"], "enabled");
    }
}
