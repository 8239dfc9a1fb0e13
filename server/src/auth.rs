//! Authentication and room grants (SPEC §3.4).
//!
//! A client is authenticated at the upgrade, by the library's `auth` hook or, with a
//! `jwt_secret`, by an HS256 token from the `token` query parameter, an `Authorization:
//! Bearer` header or a `token` cookie; or later by an `auth` message carrying the token,
//! within `connect_timeout`. Until then it may only authenticate (and ping): joins,
//! `say`, relays and requests are refused with `error` `unauthorized`. Joins are checked
//! against the grant: the token's `rooms` claim (exact names or `prefix:*` patterns), or
//! the library's `authorize_join` hook.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stellar_protocol::ws::handshake::Request;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthUser {
    pub id: String,
    /// All claims (for JWT: the token's payload), for `authorize_join` and handlers.
    pub claims: Value,
}

impl AuthUser {
    /// Whether the claims grant `room`: no `rooms` claim grants every room; otherwise a
    /// name must match exactly or a `prefix:*` pattern by prefix.
    pub fn is_granted(&self, room: &str) -> bool {
        let Some(rooms) = self.claims.get("rooms") else {
            return true;
        };
        rooms.as_array().is_some_and(|patterns| {
            patterns
                .iter()
                .filter_map(Value::as_str)
                .any(|p| match p.strip_suffix('*') {
                    Some(prefix) => room.starts_with(prefix),
                    None => p == room,
                })
        })
    }
}

/// The claims Stellar reads and writes.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rooms: Option<Vec<String>>,
}

/// Why a token was refused; sent as `auth_error` / HTTP 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("authentication required")]
    Missing,
}

/// Verifies an HS256 token (signature and `exp`) and returns its user.
pub fn verify(secret: &str, token: &str) -> Result<AuthUser, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
        _ => AuthError::Invalid(e.to_string()),
    })?;
    let id = data
        .claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| AuthError::Invalid("`sub` must be a string".into()))?
        .to_owned();
    Ok(AuthUser {
        id,
        claims: data.claims,
    })
}

/// Signs a token for `user` valid for `ttl_secs` (for `GET /api/ws/token`).
pub fn issue(secret: &str, user: &AuthUser, ttl_secs: u64) -> Result<String, AuthError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rooms = user
        .claims
        .get("rooms")
        .and_then(|r| serde_json::from_value(r.clone()).ok());
    let claims = Claims {
        sub: user.id.clone(),
        exp: now + ttl_secs,
        rooms,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::Invalid(e.to_string()))
}

/// The token an upgrade request carries: `token` query parameter (percent-decoded),
/// then `Authorization: Bearer`, then the `token` cookie.
pub fn token_from(request: &Request) -> Option<Cow<'_, str>> {
    request
        .query_param("token")
        .filter(|t| !t.is_empty())
        .or_else(|| {
            request
                .header("authorization")
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(|t| Cow::Borrowed(t.trim()))
        })
        .or_else(|| request.cookie("token").map(Cow::Borrowed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "test-secret";

    fn token(claims: Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn valid_token_gives_its_user() {
        let user = verify(
            SECRET,
            &token(json!({"sub": "ada", "exp": now() + 60}), SECRET),
        )
        .unwrap();
        assert_eq!(user.id, "ada");
    }

    #[test]
    fn expired_forged_and_malformed_tokens_are_refused() {
        assert_eq!(
            verify(
                SECRET,
                &token(json!({"sub": "ada", "exp": now() - 1}), SECRET)
            ),
            Err(AuthError::Expired)
        );
        assert!(matches!(
            verify(
                SECRET,
                &token(json!({"sub": "ada", "exp": now() + 60}), "other")
            ),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            verify(SECRET, "not.a.token"),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            verify(SECRET, &token(json!({"sub": "ada"}), SECRET)),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn room_patterns_grant_exact_names_and_prefixes() {
        let user = AuthUser {
            id: "u".into(),
            claims: json!({"rooms": ["lobby", "match:*"]}),
        };
        assert!(user.is_granted("lobby"));
        assert!(user.is_granted("match:42"));
        assert!(!user.is_granted("lobby2"));
        assert!(!user.is_granted("admin"));
        let unrestricted = AuthUser {
            id: "u".into(),
            claims: json!({}),
        };
        assert!(unrestricted.is_granted("anything"));
        let nothing = AuthUser {
            id: "u".into(),
            claims: json!({"rooms": []}),
        };
        assert!(!nothing.is_granted("lobby"));
    }

    #[test]
    fn issued_tokens_verify() {
        let user = AuthUser {
            id: "ada".into(),
            claims: json!({"rooms": ["a:*"]}),
        };
        let back = verify(SECRET, &issue(SECRET, &user, 60).unwrap()).unwrap();
        assert_eq!(back.id, "ada");
        assert!(back.is_granted("a:1") && !back.is_granted("b"));
    }

    #[test]
    fn token_is_found_in_query_header_or_cookie() {
        let limits = stellar_protocol::ws::handshake::HeadLimits::default();
        let parse = |text: &str| Request::parse(text.as_bytes(), &limits).unwrap().unwrap();
        assert_eq!(
            token_from(&parse("GET /?token=q%2E1 HTTP/1.1\r\n\r\n")).as_deref(),
            Some("q.1")
        );
        assert_eq!(
            token_from(&parse("GET / HTTP/1.1\r\nAuthorization: Bearer h\r\n\r\n")).as_deref(),
            Some("h")
        );
        assert_eq!(
            token_from(&parse("GET / HTTP/1.1\r\nCookie: a=1; token=c\r\n\r\n")).as_deref(),
            Some("c")
        );
        assert_eq!(token_from(&parse("GET / HTTP/1.1\r\n\r\n")), None);
    }
}
