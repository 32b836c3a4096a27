//! Bearer JWTs: checking them (HS256 with a shared secret, or RS256 / EdDSA with a public key,
//! the algorithm told by the key) and minting them for `transferd token`.
//!
//! transferd reads two claims: `sub`, the caller's user id (a decimal string as JWT has it, or a
//! JSON integer), and `roles`, whose `"admin"` opens the admin API. `exp` is required and
//! checked, `nbf` is checked when present, `iss` and `aud` are required and checked when the
//! service is configured with them. Nothing here ever puts a token or a key in an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{self, AuthMode};

/// The role that opens the admin API.
pub const ADMIN_ROLE: &str = "admin";

/// Who a valid token says the caller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub user_id: i64,
    pub admin: bool,
}

/// Why a token was refused. Every variant is safe to show the caller: none carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token's signature or algorithm is not accepted")]
    BadSignature,
    #[error("the token's sub must be a positive user id")]
    BadSubject,
    #[error("the token has no valid {0} claim")]
    MissingClaim(&'static str),
    #[error("the token is malformed")]
    Malformed,
}

/// A key or setting that cannot be used (at start-up, or in `transferd token`).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the key file {0} holds neither an RSA nor an Ed25519 key in PEM form")]
    UnknownKey(PathBuf),
    #[error("{0}")]
    Setting(&'static str),
    #[error("signing the token failed: {0}")]
    Signing(String),
    #[error(
        "the token just signed does not pass the service's own check ({0}): do the keys belong together?"
    )]
    SelfCheck(TokenError),
}

/// Checks bearer tokens against the configured key and claims.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// The claims transferd reads; anything else in the token is ignored.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Value,
    #[serde(default)]
    roles: Vec<String>,
}

impl Verifier {
    /// The verifier the settings describe; `None` when authentication is off.
    pub fn from_settings(auth: &config::Auth) -> Result<Option<Verifier>, KeyError> {
        if auth.mode == AuthMode::None {
            return Ok(None);
        }
        let (key, algorithm) = match (&auth.jwt_secret, &auth.jwt_public_key) {
            (Some(secret), None) => (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            ),
            (None, Some(path)) => public_key(path)?,
            _ => {
                return Err(KeyError::Setting(
                    "set exactly one of TRANSFERD_JWT_SECRET and TRANSFERD_JWT_PUBLIC_KEY",
                ));
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = auth.jwt_leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &auth.jwt_issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &auth.jwt_audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Without a configured audience the claim is not ours to judge.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Verifier { key, validation }))
    }

    /// The caller a token names, if its signature and claims pass.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|error| token_error(error.kind()))?;
        let user_id = subject(&data.claims.sub).ok_or(TokenError::BadSubject)?;
        Ok(Identity {
            user_id,
            admin: data.claims.roles.iter().any(|role| role == ADMIN_ROLE),
        })
    }
}

/// `sub` as a user id: a decimal string of digits, or a JSON integer; positive either way.
fn subject(sub: &Value) -> Option<i64> {
    let user_id = match sub {
        Value::String(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse::<i64>().ok()?
        }
        Value::Number(number) => number.as_i64()?,
        _ => return None,
    };
    (user_id > 0).then_some(user_id)
}

fn token_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => TokenError::BadSignature,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => TokenError::MissingClaim("exp"),
            "iss" => TokenError::MissingClaim("iss"),
            "aud" => TokenError::MissingClaim("aud"),
            _ => TokenError::Malformed,
        },
        _ => TokenError::Malformed,
    }
}

fn read_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A PEM public key and the algorithm its kind signs with.
fn public_key(path: &Path) -> Result<(DecodingKey, Algorithm), KeyError> {
    let pem = read_key(path)?;
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok((key, Algorithm::EdDSA));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, Algorithm::RS256));
    }
    Err(KeyError::UnknownKey(path.to_path_buf()))
}

/// A PEM private key and the algorithm its kind signs with.
fn private_key(path: &Path) -> Result<(EncodingKey, Algorithm), KeyError> {
    let pem = read_key(path)?;
    if let Ok(key) = EncodingKey::from_ed_pem(&pem) {
        return Ok((key, Algorithm::EdDSA));
    }
    if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
        return Ok((key, Algorithm::RS256));
    }
    Err(KeyError::UnknownKey(path.to_path_buf()))
}

/// Signs tokens the way the configured service checks them (`transferd token`).
pub struct Signer {
    key: EncodingKey,
    algorithm: Algorithm,
    issuer: Option<String>,
    audience: Option<String>,
}

/// What one token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub user_id: i64,
    pub admin: bool,
    pub ttl: Duration,
}

impl Signer {
    /// HS256 with `TRANSFERD_JWT_SECRET`, else the private key of `TRANSFERD_JWT_PRIVATE_KEY`.
    pub fn from_settings(settings: &config::Token) -> Result<Signer, KeyError> {
        let auth = &settings.auth;
        let (key, algorithm) = match (&auth.jwt_secret, &settings.jwt_private_key) {
            (Some(secret), _) => (
                EncodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            ),
            (None, Some(path)) => private_key(path)?,
            (None, None) => {
                return Err(KeyError::Setting(
                    "transferd token signs with TRANSFERD_JWT_SECRET (HS256) or, for a service \
                     checking with TRANSFERD_JWT_PUBLIC_KEY, with TRANSFERD_JWT_PRIVATE_KEY",
                ));
            }
        };
        Ok(Signer {
            key,
            algorithm,
            issuer: auth.jwt_issuer.clone(),
            audience: auth.jwt_audience.clone(),
        })
    }

    /// A token for `grant`, valid from `now_s` (seconds since the epoch) for its TTL.
    pub fn sign(&self, grant: &Grant, now_s: u64) -> Result<String, KeyError> {
        if grant.user_id <= 0 {
            return Err(KeyError::Setting("--sub must be a positive user id"));
        }
        let mut claims = json!({
            "sub": grant.user_id.to_string(),
            "iat": now_s,
            "nbf": now_s,
            "exp": now_s.saturating_add(grant.ttl.as_secs()),
        });
        if grant.admin {
            claims["roles"] = json!([ADMIN_ROLE]);
        }
        if let Some(issuer) = &self.issuer {
            claims["iss"] = json!(issuer);
        }
        if let Some(audience) = &self.audience {
            claims["aud"] = json!(audience);
        }
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.key)
            .map_err(|error| KeyError::Signing(error.to_string()))
    }
}

/// `transferd token`: a token for the configured key, checked against the service's own
/// verifier (when one is configured) so a mismatched key pair fails here, not at the server.
pub fn mint(settings: &config::Token, now_s: u64) -> Result<String, KeyError> {
    let signer = Signer::from_settings(settings)?;
    let grant = Grant {
        user_id: settings.sub,
        admin: settings.admin,
        ttl: settings.ttl,
    };
    let token = signer.sign(&grant, now_s)?;
    let mut checked = settings.auth.clone();
    checked.mode = AuthMode::Jwt;
    if checked.jwt_secret.is_some() || checked.jwt_public_key.is_some() {
        // Only the key and the claims are checked here: the clock is the signer's own.
        let verifier = Verifier::from_settings(&checked)?
            .ok_or(KeyError::Setting("no verifier for the configured key"))?;
        let identity = verifier.verify(&token).map_err(KeyError::SelfCheck)?;
        debug_assert_eq!(identity.user_id, grant.user_id);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Auth, Secret};
    use proptest::prelude::*;

    const SECRET: &str = "an-hs256-test-secret-of-32-bytes-or-more";

    fn testdata(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/auth/testdata")
            .join(name)
    }

    fn hs256() -> Auth {
        Auth {
            mode: AuthMode::Jwt,
            jwt_secret: Some(Secret::from(SECRET.to_string())),
            jwt_public_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_seconds: 5,
        }
    }

    fn public(file: &str) -> Auth {
        Auth {
            jwt_secret: None,
            jwt_public_key: Some(testdata(file)),
            ..hs256()
        }
    }

    fn verifier(auth: &Auth) -> Verifier {
        Verifier::from_settings(auth)
            .expect("usable settings")
            .expect("authentication is on")
    }

    fn now_s() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    /// Signs arbitrary claims with the test secret.
    fn signed(claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("signing")
    }

    fn valid_claims() -> Value {
        json!({"sub": "7", "exp": now_s() + 600})
    }

    fn with(changes: Value) -> Value {
        let mut claims = valid_claims();
        for (name, value) in changes.as_object().expect("an object") {
            if value.is_null() {
                claims.as_object_mut().expect("object").remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    }

    fn token_settings(auth: Auth, private_key: Option<&str>, admin: bool) -> config::Token {
        config::Token {
            auth,
            jwt_private_key: private_key.map(testdata),
            sub: 42,
            admin,
            ttl: Duration::from_secs(3_600),
        }
    }

    #[test]
    fn a_valid_token_names_its_user() {
        let identity = verifier(&hs256()).verify(&signed(valid_claims()));
        assert_eq!(
            identity,
            Ok(Identity {
                user_id: 7,
                admin: false
            })
        );
    }

    #[test]
    fn sub_may_be_a_decimal_string_or_an_integer_and_must_be_a_positive_id() {
        let verifier = verifier(&hs256());
        let user = |sub: Value| {
            verifier
                .verify(&signed(with(json!({ "sub": sub }))))
                .map(|i| i.user_id)
        };
        assert_eq!(user(json!("12")), Ok(12));
        assert_eq!(user(json!(12)), Ok(12));
        for wrong in [
            json!("0"),
            json!(0),
            json!(-3),
            json!("-3"),
            json!("+3"),
            json!(" 3"),
            json!("3.0"),
            json!(3.5),
            json!("alice"),
            json!(""),
            json!("99999999999999999999"),
            json!(null),
        ] {
            assert_eq!(user(wrong.clone()), Err(TokenError::BadSubject), "{wrong}");
        }
        assert!(user(json!([1])).is_err());
    }

    #[test]
    fn the_admin_role_comes_from_roles() {
        let verifier = verifier(&hs256());
        let admin = |roles: Value| {
            verifier
                .verify(&signed(with(json!({ "roles": roles }))))
                .map(|i| i.admin)
        };
        assert_eq!(admin(json!(["admin"])), Ok(true));
        assert_eq!(admin(json!(["reader", "admin"])), Ok(true));
        assert_eq!(admin(json!(["Admin", "administrator"])), Ok(false));
        assert_eq!(admin(json!([])), Ok(false));
        assert_eq!(admin(json!("admin")), Err(TokenError::Malformed));
    }

    #[test]
    fn expiry_and_not_before_are_checked_with_the_leeway() {
        let verifier = verifier(&hs256());
        let check = |claims: Value| verifier.verify(&signed(claims)).map(|_| ());
        let now = now_s();
        assert_eq!(
            check(with(json!({"exp": now - 60}))),
            Err(TokenError::Expired)
        );
        assert_eq!(
            check(with(json!({"exp": now - 2}))),
            Ok(()),
            "within the leeway"
        );
        assert_eq!(
            check(with(json!({"exp": null}))),
            Err(TokenError::MissingClaim("exp"))
        );
        assert_eq!(
            check(with(json!({"nbf": now + 60}))),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            check(with(json!({"nbf": now + 2}))),
            Ok(()),
            "within the leeway"
        );
        assert_eq!(check(with(json!({"nbf": now - 60}))), Ok(()));
        assert_eq!(
            check(with(json!({"exp": "soon"}))),
            Err(TokenError::MissingClaim("exp"))
        );
    }

    #[test]
    fn issuer_and_audience_are_required_and_checked_only_when_configured() {
        let strict = verifier(&Auth {
            jwt_issuer: Some("https://issuer.test".into()),
            jwt_audience: Some("transferd".into()),
            ..hs256()
        });
        let check = |claims: Value| strict.verify(&signed(claims)).map(|_| ());
        let good = json!({"iss": "https://issuer.test", "aud": "transferd"});
        assert_eq!(check(with(good.clone())), Ok(()));
        assert_eq!(
            check(with(
                json!({"iss": "https://issuer.test", "aud": ["other", "transferd"]})
            )),
            Ok(())
        );
        assert_eq!(
            check(with(
                json!({"iss": "https://elsewhere.test", "aud": "transferd"})
            )),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            check(with(json!({"iss": "https://issuer.test", "aud": "other"}))),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            check(with(json!({"aud": "transferd"}))),
            Err(TokenError::MissingClaim("iss"))
        );
        assert_eq!(
            check(with(json!({"iss": "https://issuer.test"}))),
            Err(TokenError::MissingClaim("aud"))
        );
        // Unconfigured: whatever the token says about them is not ours to judge.
        let lax = verifier(&hs256());
        assert!(
            lax.verify(&signed(with(json!({"iss": "x", "aud": "y"}))))
                .is_ok()
        );
    }

    #[test]
    fn a_token_signed_with_another_key_or_algorithm_is_refused() {
        let verifier = verifier(&hs256());
        let other = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &valid_claims(),
            &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!"),
        )
        .expect("signing");
        assert_eq!(verifier.verify(&other), Err(TokenError::BadSignature));
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &valid_claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("signing");
        assert_eq!(verifier.verify(&hs512), Err(TokenError::BadSignature));
        // An unsigned token (`alg: none`) is never accepted.
        let unsigned = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            signed(valid_claims())
                .split('.')
                .nth(1)
                .expect("claims part")
        );
        assert!(verifier.verify(&unsigned).is_err());
        for garbage in ["", "abc", "a.b.c", "not-the-admin-token-at-all"] {
            assert_eq!(
                verifier.verify(garbage),
                Err(TokenError::Malformed),
                "{garbage}"
            );
        }
    }

    #[test]
    fn public_keys_tell_their_algorithm_and_refuse_other_keys() {
        for (public_file, private_file) in [
            ("rsa-public.pem", "rsa-private.pem"),
            ("ed25519-public.pem", "ed25519-private.pem"),
        ] {
            let auth = public(public_file);
            let token = mint(
                &token_settings(auth.clone(), Some(private_file), true),
                now_s(),
            )
            .expect("minted and self-checked");
            assert_eq!(
                verifier(&auth).verify(&token),
                Ok(Identity {
                    user_id: 42,
                    admin: true
                }),
                "{public_file}"
            );
            // An HS256 token made with the public key's bytes as the secret (the classic
            // confusion attack) is refused.
            let pem = std::fs::read(testdata(public_file)).expect("key file");
            let confused = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &valid_claims(),
                &EncodingKey::from_secret(&pem),
            )
            .expect("signing");
            assert_eq!(
                verifier(&auth).verify(&confused),
                Err(TokenError::BadSignature)
            );
        }
        let mismatched = mint(
            &token_settings(
                public("ed25519-public.pem"),
                Some("other-ed25519-private.pem"),
                false,
            ),
            now_s(),
        );
        assert!(matches!(
            mismatched,
            Err(KeyError::SelfCheck(TokenError::BadSignature))
        ));
        assert!(matches!(
            Verifier::from_settings(&public("missing.pem")),
            Err(KeyError::Read { .. })
        ));
    }

    #[test]
    fn minted_tokens_carry_the_configured_claims() {
        let auth = Auth {
            jwt_issuer: Some("issuer".into()),
            jwt_audience: Some("audience".into()),
            ..hs256()
        };
        let token = mint(&token_settings(auth.clone(), None, false), now_s()).expect("minted");
        assert_eq!(
            verifier(&auth).verify(&token),
            Ok(Identity {
                user_id: 42,
                admin: false
            })
        );
        let stale = mint(&token_settings(auth.clone(), None, false), now_s() - 7_200);
        assert!(matches!(
            stale,
            Err(KeyError::SelfCheck(TokenError::Expired))
        ));
        let nothing_to_sign_with = mint(
            &token_settings(public("rsa-public.pem"), None, false),
            now_s(),
        );
        assert!(matches!(nothing_to_sign_with, Err(KeyError::Setting(_))));
    }

    #[test]
    fn authentication_off_has_no_verifier() {
        let off = Auth {
            mode: AuthMode::None,
            ..hs256()
        };
        assert!(Verifier::from_settings(&off).expect("settings").is_none());
    }

    proptest! {
        #[test]
        fn any_positive_user_id_round_trips_in_either_form(user_id in 1..=i64::MAX, as_integer: bool, admin: bool) {
            let sub = if as_integer { json!(user_id) } else { json!(user_id.to_string()) };
            let roles = if admin { json!(["admin"]) } else { json!(["user"]) };
            let identity = verifier(&hs256()).verify(&signed(with(json!({"sub": sub, "roles": roles}))));
            prop_assert_eq!(identity, Ok(Identity { user_id, admin }));
        }

        #[test]
        fn a_token_with_a_character_changed_never_names_anyone_else(position in 0usize..400, replacement in proptest::char::range('A', 'z')) {
            let token = signed(valid_claims());
            let position = position % token.len();
            let mut bytes: Vec<char> = token.chars().collect();
            prop_assume!(bytes[position] != replacement && bytes[position] != '.');
            bytes[position] = replacement;
            let tampered: String = bytes.into_iter().collect();
            // Base64url's last character of a part may carry spare bits; only a change the
            // decoder sees can be refused.
            if let Ok(identity) = verifier(&hs256()).verify(&tampered) {
                prop_assert_eq!(identity.user_id, 7);
            }
        }

        #[test]
        fn arbitrary_text_never_passes(text in ".{0,200}") {
            prop_assert!(verifier(&hs256()).verify(&text).is_err());
        }
    }
}
