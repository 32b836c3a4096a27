//! Who is calling, decided once per request before any handler runs.
//!
//! The router asks the [`Gate`] for a [`Caller`] on user routes and for an [`Admin`] on every
//! `/admin` route, with the [`AdminAccess`] the route's method calls for; handlers then decide
//! what that caller may see (a transfer only for its sender, receiver or an admin; balances
//! only for their owner or an admin) and hand the caller's user id to the guest as its
//! `principal`. Refusals are [`AuthError`]s, which `http/error.rs` turns into 401/403 with an
//! RFC 6750 `WWW-Authenticate` header.

pub mod jwt;

use http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use crate::config::{self, Secret};
use jwt::{Identity, KeyError, TokenError, Verifier};

/// The caller of a user route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off (`TRANSFERD_AUTH=none`): anyone may do anything a user may.
    Anyone,
    User(Identity),
}

impl Caller {
    /// The user id the guest checks the sender against; none when authentication is off.
    pub fn principal(&self) -> Option<i64> {
        match self {
            Caller::Anyone => None,
            Caller::User(identity) => Some(identity.user_id),
        }
    }

    /// Whose idempotency keys the caller's keys are: its own.
    pub fn scope(&self) -> String {
        match self {
            Caller::Anyone => "anyone".to_string(),
            Caller::User(identity) => format!("user:{}", identity.user_id),
        }
    }

    /// Whether the caller may read `user_id`'s accounts.
    pub fn may_see_account(&self, user_id: i64) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::User(identity) => identity.admin || identity.user_id == user_id,
        }
    }

    /// Whether the caller may act for `user_id` (post or void its pending transfers).
    pub fn may_act_as(&self, user_id: i64) -> bool {
        self.may_see_account(user_id)
    }

    /// Whether the caller may read a transfer between these parties.
    pub fn may_see_transfer(&self, sender_id: Option<i64>, receiver_id: Option<i64>) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::User(identity) => {
                identity.admin
                    || sender_id == Some(identity.user_id)
                    || receiver_id == Some(identity.user_id)
            }
        }
    }
}

/// The caller of an admin route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    /// Presented `TRANSFERD_ADMIN_TOKEN`.
    StaticToken,
    /// A JWT with the admin role.
    User(i64),
}

impl Admin {
    /// How the registry's history names who did something.
    pub fn actor(&self) -> String {
        match self {
            Admin::StaticToken => "admin-token".to_string(),
            Admin::User(user_id) => format!("user:{user_id}"),
        }
    }
}

/// What an admin route accepts. The router derives it from the request's method (and, for a
/// read, whether the status page polls it), so a route added later is covered without doing
/// anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAccess {
    /// The status page, its script and the read-only JSON it polls: a bearer token, or HTTP
    /// Basic credentials whose password is an admin token (what a browser resends by itself).
    StatusPage,
    /// Any other read: a bearer token.
    Read,
    /// Anything that changes state (every method but GET and HEAD): a bearer token, which a
    /// browser never adds by itself, and no `Origin` but the service's own (`same_origin`).
    Change,
}

/// Why a request was not let through. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("the Authorization header must be one `Bearer <token>`")]
    Malformed,
    #[error("invalid bearer token: {0}")]
    Token(#[from] TokenError),
    #[error("this route needs a token with the admin role")]
    NotAdmin,
    #[error("HTTP Basic credentials open only the status page; this route needs a bearer token")]
    BasicNotAccepted,
    #[error("a request from another origin may not change anything here")]
    ForeignOrigin,
}

impl AuthError {
    /// The RFC 6750 `error` code; `foreign_origin` for the one refusal that is not about the
    /// token (it gets no bearer challenge, see [`AuthError::challenges`]).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing | AuthError::Malformed | AuthError::BasicNotAccepted => {
                "invalid_request"
            }
            AuthError::Token(_) => "invalid_token",
            AuthError::NotAdmin => "insufficient_scope",
            AuthError::ForeignOrigin => "foreign_origin",
        }
    }

    /// Whether the refusal is about the credentials, so that an RFC 6750 challenge fits it.
    pub fn challenges(&self) -> bool {
        !matches!(self, AuthError::ForeignOrigin)
    }
}

/// Lets requests through: checks bearer tokens, or lets everyone through when authentication
/// is off; the static admin token opens `/admin` either way.
pub struct Gate {
    verifier: Option<Verifier>,
    admin_token: Option<Secret>,
}

impl Gate {
    pub fn new(verifier: Option<Verifier>, admin_token: Option<Secret>) -> Gate {
        Gate {
            verifier,
            admin_token,
        }
    }

    /// The gate `transferd serve` is configured for; says loudly when it lets everyone in.
    pub fn from_settings(settings: &config::Serve) -> Result<Gate, KeyError> {
        let verifier = Verifier::from_settings(&settings.auth)?;
        if verifier.is_none() {
            tracing::warn!(
                "TRANSFERD_AUTH=none: authentication is OFF; anyone who reaches this port can move \
                 any account's money and read any balance. Run like this only behind a gateway \
                 that authenticates"
            );
        }
        if settings.admin_token.is_none() && verifier.is_none() {
            tracing::warn!(
                "TRANSFERD_ADMIN_TOKEN is not set and authentication is off: the admin API refuses every request"
            );
        }
        Ok(Gate::new(verifier, settings.admin_token.clone()))
    }

    /// The caller of a user route.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let Some(verifier) = &self.verifier else {
            return Ok(Caller::Anyone);
        };
        let token = bearer(headers)?;
        Ok(Caller::User(verifier.verify(token).inspect_err(refused)?))
    }

    /// The caller of an admin route: the static admin token, or a JWT with the admin role, as
    /// a bearer token, or on the status page's routes also as the password of HTTP Basic
    /// credentials (what a browser sends for the status page). A route that changes state
    /// refuses a foreign `Origin` before it looks at any credentials.
    pub fn admin(&self, headers: &HeaderMap, access: AdminAccess) -> Result<Admin, AuthError> {
        let credential = match access {
            AdminAccess::StatusPage => admin_credential(headers)?,
            AdminAccess::Read => bearer_only(headers)?.to_owned(),
            AdminAccess::Change => {
                same_origin(headers)?;
                bearer_only(headers)?.to_owned()
            }
        };
        let token = credential.as_str();
        if let Some(expected) = &self.admin_token
            && bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes()))
        {
            return Ok(Admin::StaticToken);
        }
        let Some(verifier) = &self.verifier else {
            return Err(AuthError::Token(TokenError::BadSignature));
        };
        match verifier.verify(token).inspect_err(refused)? {
            Identity {
                user_id,
                admin: true,
            } => Ok(Admin::User(user_id)),
            Identity { admin: false, .. } => Err(AuthError::NotAdmin),
        }
    }
}

/// Logs why a token was refused; the token itself never reaches the log.
fn refused(error: &TokenError) {
    tracing::debug!(%error, "bearer token refused");
}

/// The token of the one `Authorization: Bearer <token>` header (the scheme in any case).
fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let (scheme, token) = authorization(headers)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.contains(' ') {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// The bearer token of a route that takes no Basic credentials, saying so to a caller that
/// sent them (a browser, most likely, resending what it cached for the status page).
fn bearer_only(headers: &HeaderMap) -> Result<&str, AuthError> {
    let (scheme, _) = authorization(headers)?;
    if scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthError::BasicNotAccepted);
    }
    bearer(headers)
}

/// Refuses a request sent by a page of another origin. The service's own origin is the
/// request's `Host` (one header) under `http` (what transferd serves) or `https` (what a
/// TLS-terminating proxy that keeps the `Host` serves): a browser sets both `Host` and
/// `Origin` itself, so a page elsewhere cannot make them agree. No `Origin` is a client
/// that is not a browser page (the CLI, curl) and passes; any other `Origin`, `null` included,
/// is refused.
fn same_origin(headers: &HeaderMap) -> Result<(), AuthError> {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return Ok(());
    };
    let mut hosts = headers.get_all(header::HOST).iter();
    let (None, Some(host), None) = (origins.next(), hosts.next(), hosts.next()) else {
        return Err(AuthError::ForeignOrigin);
    };
    let authority = origin.to_str().ok().and_then(|origin| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
    });
    match (authority, host.to_str()) {
        (Some(authority), Ok(host)) if !host.is_empty() && authority.eq_ignore_ascii_case(host) => {
            Ok(())
        }
        _ => Err(AuthError::ForeignOrigin),
    }
}

/// An admin's token: a bearer token, or the password of `Basic` credentials (base64 of
/// `user:password`; the user name is ignored).
fn admin_credential(headers: &HeaderMap) -> Result<String, AuthError> {
    use base64::Engine as _;
    let (scheme, value) = authorization(headers)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return bearer(headers).map(str::to_owned);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| AuthError::Malformed)?;
    let pair = String::from_utf8(decoded).map_err(|_| AuthError::Malformed)?;
    match pair.split_once(':') {
        Some((_user, password)) if !password.is_empty() => Ok(password.to_owned()),
        _ => Err(AuthError::Malformed),
    }
}

/// The scheme and the rest of the one `Authorization` header.
fn authorization(headers: &HeaderMap) -> Result<(&str, &str), AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return match headers.contains_key(header::AUTHORIZATION) {
            true => Err(AuthError::Malformed),
            false => Err(AuthError::Missing),
        };
    };
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, rest) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok((scheme, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Auth, AuthMode};
    use http::HeaderValue;

    const SECRET: &str = "a-gate-test-secret-of-32-bytes-or-more";
    const ADMIN_TOKEN: &str = "static-admin-token-0123";

    fn gate(mode: AuthMode, admin_token: Option<&str>) -> Gate {
        let auth = Auth {
            mode,
            jwt_secret: Some(Secret::from(SECRET.to_string())),
            jwt_public_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_seconds: 0,
        };
        let verifier = Verifier::from_settings(&auth).expect("settings");
        Gate::new(verifier, admin_token.map(|t| Secret::from(t.to_string())))
    }

    fn token(user_id: i64, admin: bool) -> String {
        let signer = jwt::Signer::from_settings(&config::Token {
            auth: Auth {
                mode: AuthMode::Jwt,
                jwt_secret: Some(Secret::from(SECRET.to_string())),
                jwt_public_key: None,
                jwt_issuer: None,
                jwt_audience: None,
                jwt_leeway_seconds: 0,
            },
            jwt_private_key: None,
            sub: user_id,
            admin,
            ttl: std::time::Duration::from_secs(60),
        })
        .expect("signer");
        let grant = jwt::Grant {
            user_id,
            admin,
            ttl: std::time::Duration::from_secs(60),
        };
        signer
            .sign(&grant, jsonwebtoken::get_current_timestamp())
            .expect("signed")
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        headers
    }

    fn bearer_of(token: &str) -> HeaderMap {
        headers(&[&format!("Bearer {token}")])
    }

    #[test]
    fn the_authorization_header_must_be_one_bearer_token() {
        assert_eq!(bearer(&headers(&[])), Err(AuthError::Missing));
        assert_eq!(bearer(&headers(&["Bearer abc"])), Ok("abc"));
        assert_eq!(bearer(&headers(&["bearer abc"])), Ok("abc"));
        for wrong in ["Basic abc", "Bearer", "Bearer ", "Bearer a b", "abc"] {
            assert_eq!(
                bearer(&headers(&[wrong])),
                Err(AuthError::Malformed),
                "{wrong}"
            );
        }
        assert_eq!(
            bearer(&headers(&["Bearer a", "Bearer b"])),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn user_routes_need_a_valid_token_and_name_its_user() {
        let gate = gate(AuthMode::Jwt, Some(ADMIN_TOKEN));
        let caller = gate.caller(&bearer_of(&token(7, false)));
        assert_eq!(
            caller,
            Ok(Caller::User(Identity {
                user_id: 7,
                admin: false
            }))
        );
        assert_eq!(gate.caller(&headers(&[])), Err(AuthError::Missing));
        assert!(matches!(
            gate.caller(&bearer_of("not.a.token")),
            Err(AuthError::Token(_))
        ));
        // The static admin token is for /admin only.
        assert!(matches!(
            gate.caller(&bearer_of(ADMIN_TOKEN)),
            Err(AuthError::Token(_))
        ));
    }

    #[test]
    fn admin_routes_need_the_admin_role_or_the_static_token() {
        let gate = gate(AuthMode::Jwt, Some(ADMIN_TOKEN));
        assert_eq!(
            gate.admin(&bearer_of(ADMIN_TOKEN), AdminAccess::Change),
            Ok(Admin::StaticToken)
        );
        assert_eq!(
            gate.admin(&bearer_of(&token(9, true)), AdminAccess::Change),
            Ok(Admin::User(9))
        );
        assert_eq!(
            gate.admin(&bearer_of(&token(9, false)), AdminAccess::Change),
            Err(AuthError::NotAdmin)
        );
        assert_eq!(
            gate.admin(&headers(&[]), AdminAccess::Change),
            Err(AuthError::Missing)
        );
        assert!(matches!(
            gate.admin(&bearer_of("static-admin-token-0124"), AdminAccess::Change),
            Err(AuthError::Token(_))
        ));
        let without_static = self::gate(AuthMode::Jwt, None);
        assert!(matches!(
            without_static.admin(&bearer_of(ADMIN_TOKEN), AdminAccess::Change),
            Err(AuthError::Token(_))
        ));
    }

    fn basic(user_and_password: &str) -> HeaderMap {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_and_password);
        headers(&[&format!("Basic {encoded}")])
    }

    #[test]
    fn an_admin_may_log_in_with_basic_credentials_whose_password_is_an_admin_token() {
        let gate = gate(AuthMode::Jwt, Some(ADMIN_TOKEN));
        let with_static = basic(&format!("anyone:{ADMIN_TOKEN}"));
        assert_eq!(
            gate.admin(&with_static, AdminAccess::StatusPage),
            Ok(Admin::StaticToken)
        );
        let with_jwt = basic(&format!("admin:{}", token(9, true)));
        assert_eq!(
            gate.admin(&with_jwt, AdminAccess::StatusPage),
            Ok(Admin::User(9))
        );
        assert_eq!(
            gate.admin(
                &basic(&format!("u:{}", token(9, false))),
                AdminAccess::StatusPage
            ),
            Err(AuthError::NotAdmin)
        );
        assert!(matches!(
            gate.admin(
                &basic("admin:static-admin-token-0124"),
                AdminAccess::StatusPage
            ),
            Err(AuthError::Token(_))
        ));
        for wrong in [
            headers(&["Basic not-base64!"]),
            basic("no-colon"),
            basic("user:"),
            headers(&["Basic "]),
        ] {
            assert_eq!(
                gate.admin(&wrong, AdminAccess::StatusPage),
                Err(AuthError::Malformed)
            );
        }
        // Basic is for /admin only: a user route still needs a bearer token.
        assert_eq!(gate.caller(&with_jwt), Err(AuthError::Malformed));
    }

    #[test]
    fn basic_credentials_open_only_the_status_page() {
        let gate = gate(AuthMode::Jwt, Some(ADMIN_TOKEN));
        let cached = basic(&format!("oncall:{ADMIN_TOKEN}"));
        assert_eq!(
            gate.admin(&cached, AdminAccess::StatusPage),
            Ok(Admin::StaticToken)
        );
        for access in [AdminAccess::Read, AdminAccess::Change] {
            assert_eq!(
                gate.admin(&cached, access),
                Err(AuthError::BasicNotAccepted),
                "{access:?}"
            );
            assert_eq!(
                gate.admin(&bearer_of(ADMIN_TOKEN), access),
                Ok(Admin::StaticToken)
            );
        }
    }

    /// `headers` with `Host` and, when given, `Origin` added.
    fn from(mut headers: HeaderMap, host: &str, origin: Option<&str>) -> HeaderMap {
        headers.insert(header::HOST, HeaderValue::from_str(host).expect("host"));
        if let Some(origin) = origin {
            headers.insert(
                header::ORIGIN,
                HeaderValue::from_str(origin).expect("origin"),
            );
        }
        headers
    }

    #[test]
    fn a_change_is_refused_from_a_foreign_origin_whatever_the_credentials() {
        let gate = gate(AuthMode::Jwt, Some(ADMIN_TOKEN));
        let host = "transferd.internal:8080";
        for credentials in [
            bearer_of(ADMIN_TOKEN),
            bearer_of(&token(9, true)),
            basic(&format!("oncall:{ADMIN_TOKEN}")),
        ] {
            for foreign in [
                "https://evil.example",
                "null",
                "http://transferd.internal",
                "http://transferd.internal:8081",
                "ftp://transferd.internal:8080",
                "http://transferd.internal:8080.evil.example",
            ] {
                let request = from(credentials.clone(), host, Some(foreign));
                assert_eq!(
                    gate.admin(&request, AdminAccess::Change),
                    Err(AuthError::ForeignOrigin),
                    "{foreign}"
                );
            }
        }
        // The CLI sends no Origin; a page of the service itself sends its own.
        for own in [
            None,
            Some("http://transferd.internal:8080"),
            Some("https://Transferd.Internal:8080"),
        ] {
            let request = from(bearer_of(ADMIN_TOKEN), host, own);
            assert_eq!(
                gate.admin(&request, AdminAccess::Change),
                Ok(Admin::StaticToken),
                "{own:?}"
            );
        }
        // Without a Host to compare with, an Origin is never the service's own.
        let mut no_host = bearer_of(ADMIN_TOKEN);
        no_host.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://transferd.internal:8080"),
        );
        assert_eq!(same_origin(&no_host), Err(AuthError::ForeignOrigin));
        // Reads do not look at the Origin: a browser's CORS keeps their answers from a page
        // elsewhere.
        let read = from(bearer_of(ADMIN_TOKEN), host, Some("https://evil.example"));
        assert_eq!(gate.admin(&read, AdminAccess::Read), Ok(Admin::StaticToken));
    }

    #[test]
    fn without_authentication_everyone_is_a_user_and_admin_needs_the_static_token() {
        let gate = gate(AuthMode::None, Some(ADMIN_TOKEN));
        assert_eq!(gate.caller(&headers(&[])), Ok(Caller::Anyone));
        assert_eq!(Caller::Anyone.principal(), None);
        assert_eq!(
            gate.admin(&bearer_of(ADMIN_TOKEN), AdminAccess::Change),
            Ok(Admin::StaticToken)
        );
        assert!(
            gate.admin(&bearer_of(&token(9, true)), AdminAccess::Change)
                .is_err()
        );
        assert_eq!(
            gate.admin(&headers(&[]), AdminAccess::Change),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn users_see_their_own_accounts_and_transfers_admins_see_all() {
        let user = Caller::User(Identity {
            user_id: 7,
            admin: false,
        });
        let admin = Caller::User(Identity {
            user_id: 1,
            admin: true,
        });
        assert_eq!(user.principal(), Some(7));
        assert!(user.may_see_account(7));
        assert!(!user.may_see_account(8));
        assert!(admin.may_see_account(8));
        assert!(user.may_see_transfer(Some(7), Some(8)));
        assert!(user.may_see_transfer(Some(8), Some(7)));
        assert!(!user.may_see_transfer(Some(8), Some(9)));
        assert!(!user.may_see_transfer(None, None));
        assert!(admin.may_see_transfer(Some(8), Some(9)));
    }

    #[test]
    fn refusals_name_their_rfc_6750_code() {
        assert_eq!(AuthError::Missing.code(), "invalid_request");
        assert_eq!(AuthError::Malformed.code(), "invalid_request");
        assert_eq!(
            AuthError::Token(TokenError::Expired).code(),
            "invalid_token"
        );
        assert_eq!(AuthError::NotAdmin.code(), "insufficient_scope");
        assert_eq!(AuthError::BasicNotAccepted.code(), "invalid_request");
        assert!(!AuthError::ForeignOrigin.challenges());
    }
}
