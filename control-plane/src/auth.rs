//! Bearer-token authentication of gRPC calls (DESIGN §10).
//!
//! Tokens come from `--auth-token-file` (one a line, `#` comments) and/or `MYAGENT_AUTH_TOKENS`
//! (comma or newline list). With at least one token, every call except `grpc.health.v1` and
//! server reflection needs `authorization: Bearer <token>`; without tokens the API is open.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures::future::BoxFuture;
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::error::{Error, Result};

/// The accepted tokens. `Debug` never prints them.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<Vec<u8>>>);

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    pub fn new<I: IntoIterator<Item = String>>(tokens: I) -> Self {
        let mut v: Vec<Vec<u8>> = tokens.into_iter().map(String::into_bytes).collect();
        v.sort();
        v.dedup();
        Tokens(Arc::new(v))
    }

    /// Reads the token file (if any) and the inline list (if any); both may be given.
    pub fn load(file: Option<&Path>, inline: Option<&str>) -> Result<Self> {
        let mut tokens = Vec::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::invalid(
                    "--auth-token-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            tokens.extend(parse_lines(&text, false));
            if tokens.is_empty() {
                return Err(Error::invalid(
                    "--auth-token-file",
                    format!("{} contains no token", path.display()),
                ));
            }
        }
        if let Some(list) = inline {
            tokens.extend(parse_lines(list, true));
        }
        // The message never quotes the token: it is a secret even when malformed.
        if tokens
            .iter()
            .any(|t| t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(Error::invalid(
                "--auth-tokens",
                "a token contains whitespace or control characters",
            ));
        }
        Ok(Tokens::new(tokens))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Checks an `authorization` header value. Every configured token is compared in constant
    /// time, and all of them are compared, so timing reveals neither which token nor how much
    /// of it matched.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<()> {
        let Some(value) = authorization else {
            return Err(Error::Unauthorized(
                "missing bearer token (authorization: Bearer <token>)".into(),
            ));
        };
        let presented = strip_bearer(value).ok_or_else(|| {
            Error::Unauthorized("authorization header is not a bearer token".into())
        })?;
        let mut ok = subtle::Choice::from(0u8);
        for t in self.0.iter() {
            ok |= t.as_slice().ct_eq(presented);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(Error::Unauthorized("invalid bearer token".into()))
        }
    }
}

fn parse_lines(text: &str, commas: bool) -> Vec<String> {
    text.split(|c| c == '\n' || (commas && c == ','))
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    const PREFIX: &[u8] = b"bearer ";
    if value.len() <= PREFIX.len() || !value[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let token = value[PREFIX.len()..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Calls that never need a token: probes and generic tooling must work without our secrets.
pub fn is_exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// Tower layer enforcing the tokens on the gRPC router.
#[derive(Clone)]
pub struct AuthLayer {
    tokens: Tokens,
}

impl AuthLayer {
    pub fn new(tokens: Tokens) -> Self {
        AuthLayer { tokens }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    tokens: Tokens,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, std::result::Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !self.tokens.is_empty() && !is_exempt(req.uri().path()) {
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if let Err(e) = self.tokens.verify(header) {
                // Logged without the presented value: it may be a near-miss of a real secret.
                tracing::warn!(method = req.uri().path(), reason = %e, "rejected unauthenticated gRPC call");
                let status: tonic::Status = e.into();
                return Box::pin(futures::future::ready(Ok(status.into_http())));
            }
        }
        // The clone that was driven to readiness is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_files_with_comments_and_inline_lists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# admins\nalpha\n\n  beta  \n#gamma\n").unwrap();
        let t = Tokens::load(Some(&file), Some("delta,epsilon\nzeta")).unwrap();
        assert_eq!(t.len(), 5);
        assert!(t.verify(Some(b"Bearer alpha")).is_ok());
        assert!(t.verify(Some(b"bearer zeta")).is_ok());
        assert!(t.verify(Some(b"Bearer gamma")).is_err());
    }

    #[test]
    fn rejects_missing_malformed_and_wrong_tokens() {
        let t = Tokens::new(["s3cret".to_string()]);
        for bad in [
            None,
            Some(&b"s3cret"[..]),
            Some(b"Basic s3cret"),
            Some(b"Bearer "),
            Some(b"Bearer s3cre"),
        ] {
            match t.verify(bad) {
                Err(Error::Unauthorized(_)) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn debug_hides_tokens() {
        let t = Tokens::new(["s3cret".to_string()]);
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn empty_token_file_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# nothing\n").unwrap();
        assert!(matches!(
            Tokens::load(Some(&file), None),
            Err(Error::InvalidRequest { field, .. }) if field == "--auth-token-file"
        ));
    }
}
