//! `GET /admin/status`: the on-call engineer's page, and `GET /admin/status.js`, its script.
//! Plain HTML and a little JavaScript, compiled into the binary (no build step, no files to
//! deploy). The page reads what any admin client can (`/admin/status/history`, `/admin/guest`,
//! `/readyz`, `/metrics`), draws its charts itself and refreshes in place.
//!
//! A browser cannot send a bearer token, so the admin gate also takes HTTP Basic credentials
//! whose password is an admin token, and a refusal of the page asks for them
//! (`WWW-Authenticate: Basic`); the browser then resends them with the page's requests. It
//! would resend them to any `/admin` route, a form posted by another site's page included, so
//! they open only the page, its script and the read-only JSON it polls
//! (`http::admin_access`).

use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;

use crate::auth::AuthError;
use crate::http::api::ErrorBody;
use crate::http::error::{ApiError, Reply};
use crate::http::routes::AdminRoute;

const PAGE: &str = include_str!("status.html");
const SCRIPT: &str = include_str!("status.js");

/// Scripts only from this origin (the page's one script file), nothing framed, nothing sent
/// elsewhere; the page's own `<style>` block is its only inline content.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
     style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The challenge that makes a browser ask for a user name and password.
const BASIC_CHALLENGE: &str = "Basic realm=\"transferd admin\", charset=\"UTF-8\"";

/// The page, the same for every admin.
#[utoipa::path(
    get, path = AdminRoute::StatusPage.path(), operation_id = "status_page", tag = "admin",
    summary = "The on-call status page (HTML, refreshes itself)",
    description = "Besides a bearer token, takes HTTP Basic credentials whose password is an admin token (any user name), so a browser can open it; a refusal then carries a `Basic` challenge too. Basic credentials open only this page, its script and the read-only JSON it polls (`GET /admin/guest`, `/admin/status/history`).",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The page", content_type = "text/html"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub fn page() -> Reply {
    respond(PAGE, "text/html; charset=utf-8")
}

/// The page's script, from this origin as its policy asks.
#[utoipa::path(
    get, path = AdminRoute::StatusScript.path(), operation_id = "status_script", tag = "admin",
    summary = "The status page's script",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "JavaScript", content_type = "text/javascript"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
)]
pub fn script() -> Reply {
    respond(SCRIPT, "text/javascript; charset=utf-8")
}

/// The refusal of the page: the usual 401/403 with a Basic challenge added, so a browser
/// prompts for credentials.
pub fn refused(error: AuthError) -> Reply {
    let mut response = ApiError::Auth(error).into_response();
    if response.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(BASIC_CHALLENGE),
        );
    }
    response
}

fn respond(body: &'static str, content_type: &'static str) -> Reply {
    let mut response = Reply::new(Full::new(bytes::Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_its_script_from_the_route_that_serves_it() {
        assert!(PAGE.contains(r#"<script src="/admin/status.js"></script>"#));
        assert!(
            !PAGE.contains("<script>"),
            "no inline script: the policy forbids it"
        );
        assert_eq!(
            page().headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(page().headers()[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn every_element_the_script_writes_is_on_the_page() {
        for id in SCRIPT
            .split("show(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
        {
            assert!(
                PAGE.contains(&format!("id=\"{id}\"")),
                "the page lacks #{id}"
            );
        }
    }

    #[test]
    fn a_refused_page_asks_the_browser_for_credentials() {
        let refused = refused(AuthError::Missing);
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let challenges: Vec<&str> = refused
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        assert!(challenges.iter().any(|c| c.starts_with("Bearer")));
        assert!(challenges.contains(&BASIC_CHALLENGE));
    }
}
