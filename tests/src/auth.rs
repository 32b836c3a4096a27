//! Bearer tokens for the tests: every host the harness starts checks HS256 tokens signed with
//! [`JWT_SECRET`], and the harness's requests carry a token of the user they act for (the
//! transfer's sender), or an admin's when they read what anyone may have written.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// The HS256 secret every test host is started with (`TRANSFERD_JWT_SECRET`).
pub const JWT_SECRET: &str = "transferd-e2e-test-jwt-secret-0123456789";

/// The user id the harness's admin tokens name.
pub const ADMIN_USER_ID: i64 = 9_000_000;

/// How long the harness's tokens are valid: longer than any test.
const TEST_TTL: Duration = Duration::from_secs(6 * 3_600);

fn now_s() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}

/// Signs `claims` with [`JWT_SECRET`].
pub fn sign(claims: &Value) -> String {
    sign_with(claims, JWT_SECRET.as_bytes())
}

/// Signs `claims` with HS256 and `secret`.
pub fn sign_with(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing cannot fail with a byte secret")
}

/// Claims for `user_id`, valid now for [`TEST_TTL`], with the admin role or none.
pub fn claims(user_id: i64, admin: bool) -> Value {
    let now = now_s();
    let mut claims = json!({
        "sub": user_id.to_string(),
        "iat": now,
        "exp": now + TEST_TTL.as_secs() as i64,
    });
    if admin {
        claims["roles"] = json!(["admin"]);
    }
    claims
}

/// A token for `user_id`.
pub fn user_token(user_id: i64) -> String {
    sign(&claims(user_id, false))
}

/// A token with the admin role.
pub fn admin_token() -> String {
    sign(&claims(ADMIN_USER_ID, true))
}

/// The token to post `body` with: its sender's (as a JSON integer or a string holding one),
/// else an admin's, so a body without a readable sender still reaches the validation.
pub fn token_for_body(body: &str) -> String {
    let sender = serde_json::from_str::<Value>(body)
        .ok()
        // A batch's: its first transfer's sender.
        .map(|body| match body["transfers"][0].is_object() {
            true => body["transfers"][0].clone(),
            false => body,
        })
        .and_then(|body| match &body["sender_id"] {
            Value::Number(number) => number.as_i64(),
            Value::String(text) => text.parse().ok(),
            _ => None,
        });
    match sender {
        Some(sender) if sender > 0 => user_token(sender),
        // Not a user id a token can name: the guest refuses the body before it asks who sends.
        _ => admin_token(),
    }
}
