//! Every route the API serves, written once: [`Endpoint::route`] gives each its method, path
//! and metric name, and resolution (404, 405 and its `Allow`), the metric labels and the
//! OpenAPI document's paths (each handler's `#[utoipa::path]` takes its path from here) are
//! all read from it. A unit test checks the document lists exactly these routes.

use http::Method;

use crate::auth::AdminAccess;
use crate::http::error::ApiError;

/// What a request asks for, once its path and method are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// For anyone: liveness, readiness, metrics and the API's document.
    Service(ServiceRoute),
    /// A user's own money, behind a bearer token.
    User(UserRoute),
    /// `/admin`, behind the admin role or the static admin token.
    Admin(AdminRoute),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceRoute {
    Health,
    Ready,
    Metrics,
    OpenApi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserRoute {
    CreateTransfer,
    CreateBatch,
    ListTransfers,
    ShowTransfer,
    PostTransfer,
    VoidTransfer,
    Balances,
    Entries,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRoute {
    Deposit,
    GuestStatus,
    GuestUpload,
    GuestActivate,
    GuestRollback,
    GuestCanary,
    GuestShadow,
    GuestShadowStats,
    GuestBacktest,
    GuestEndCandidate,
    StatusPage,
    StatusScript,
    StatusHistory,
    QuarantineList,
    QuarantineRetry,
    AccountLimits,
}

/// A method a route answers; [`Verb::Get`] answers HEAD too (hyper sends no body for HEAD).
/// Declared in the order `Allow` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

impl Verb {
    pub fn accepts(self, method: &Method) -> bool {
        match self {
            Verb::Get => method == Method::GET || method == Method::HEAD,
            Verb::Post => method == Method::POST,
            Verb::Put => method == Method::PUT,
            Verb::Delete => method == Method::DELETE,
        }
    }

    /// How `Allow` names it: GET with HEAD.
    fn allow(self) -> &'static str {
        match self {
            Verb::Get => "GET, HEAD",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Delete => "DELETE",
        }
    }
}

/// One route: how it is asked for, and the bounded name its metrics carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub verb: Verb,
    /// The path, `{name}` standing for any one segment (handed to the handler).
    pub path: &'static str,
    /// The `route` label of the HTTP metrics: the route, not the raw path.
    pub metric: &'static str,
}

const fn route(verb: Verb, path: &'static str, metric: &'static str) -> Route {
    Route { verb, path, metric }
}

impl Endpoint {
    /// Every endpoint, the order resolution tries them in. Two paths overlap only where a
    /// literal segment stands for a `{name}` one (`/transfers/batch`,
    /// `/transfers/{transaction_id}`); the literal one wins (a test checks it).
    pub const ALL: [Endpoint; 28] = [
        Endpoint::Service(ServiceRoute::Health),
        Endpoint::Service(ServiceRoute::Ready),
        Endpoint::Service(ServiceRoute::Metrics),
        Endpoint::Service(ServiceRoute::OpenApi),
        Endpoint::User(UserRoute::CreateTransfer),
        Endpoint::User(UserRoute::CreateBatch),
        Endpoint::User(UserRoute::ListTransfers),
        Endpoint::User(UserRoute::ShowTransfer),
        Endpoint::User(UserRoute::PostTransfer),
        Endpoint::User(UserRoute::VoidTransfer),
        Endpoint::User(UserRoute::Balances),
        Endpoint::User(UserRoute::Entries),
        Endpoint::Admin(AdminRoute::Deposit),
        Endpoint::Admin(AdminRoute::GuestStatus),
        Endpoint::Admin(AdminRoute::GuestUpload),
        Endpoint::Admin(AdminRoute::GuestActivate),
        Endpoint::Admin(AdminRoute::GuestRollback),
        Endpoint::Admin(AdminRoute::GuestCanary),
        Endpoint::Admin(AdminRoute::GuestShadow),
        Endpoint::Admin(AdminRoute::GuestShadowStats),
        Endpoint::Admin(AdminRoute::GuestBacktest),
        Endpoint::Admin(AdminRoute::GuestEndCandidate),
        Endpoint::Admin(AdminRoute::StatusPage),
        Endpoint::Admin(AdminRoute::StatusScript),
        Endpoint::Admin(AdminRoute::StatusHistory),
        Endpoint::Admin(AdminRoute::QuarantineList),
        Endpoint::Admin(AdminRoute::QuarantineRetry),
        Endpoint::Admin(AdminRoute::AccountLimits),
    ];

    /// The route table: each endpoint's method, path and metric name.
    pub const fn route(self) -> Route {
        use AdminRoute as A;
        use ServiceRoute as S;
        use UserRoute as U;
        use Verb::{Delete, Get, Post, Put};
        match self {
            Endpoint::Service(S::Health) => route(Get, "/healthz", "healthz"),
            Endpoint::Service(S::Ready) => route(Get, "/readyz", "readyz"),
            Endpoint::Service(S::Metrics) => route(Get, "/metrics", "metrics"),
            Endpoint::Service(S::OpenApi) => route(Get, "/openapi.json", "openapi"),
            Endpoint::User(U::CreateTransfer) => route(Post, "/transfers", "create_transfer"),
            Endpoint::User(U::CreateBatch) => route(Post, "/transfers/batch", "create_batch"),
            Endpoint::User(U::ListTransfers) => route(Get, "/transfers", "list_transfers"),
            Endpoint::User(U::ShowTransfer) => {
                route(Get, "/transfers/{transaction_id}", "show_transfer")
            }
            Endpoint::User(U::PostTransfer) => {
                route(Post, "/transfers/{transaction_id}/post", "post_transfer")
            }
            Endpoint::User(U::VoidTransfer) => {
                route(Post, "/transfers/{transaction_id}/void", "void_transfer")
            }
            Endpoint::User(U::Balances) => route(Get, "/accounts/{user_id}/balances", "balances"),
            Endpoint::User(U::Entries) => route(Get, "/accounts/{user_id}/entries", "entries"),
            Endpoint::Admin(A::Deposit) => route(Post, "/admin/deposits", "deposit"),
            Endpoint::Admin(A::GuestStatus) => route(Get, "/admin/guest", "admin_guest"),
            Endpoint::Admin(A::GuestUpload) => route(Put, "/admin/guest", "admin_guest"),
            Endpoint::Admin(A::GuestActivate) => {
                route(Post, "/admin/guest/{version}/activate", "admin_guest")
            }
            Endpoint::Admin(A::GuestRollback) => {
                route(Post, "/admin/guest/rollback", "admin_guest")
            }
            Endpoint::Admin(A::GuestCanary) => {
                route(Post, "/admin/guest/{version}/canary", "admin_guest")
            }
            Endpoint::Admin(A::GuestShadow) => {
                route(Post, "/admin/guest/{version}/shadow", "admin_guest")
            }
            Endpoint::Admin(A::GuestShadowStats) => {
                route(Get, "/admin/guest/{version}/shadow", "admin_guest")
            }
            Endpoint::Admin(A::GuestBacktest) => {
                route(Post, "/admin/guest/{version}/backtest", "admin_guest")
            }
            Endpoint::Admin(A::GuestEndCandidate) => {
                route(Delete, "/admin/guest/candidate", "admin_guest")
            }
            Endpoint::Admin(A::StatusPage) => route(Get, "/admin/status", "admin_status"),
            Endpoint::Admin(A::StatusScript) => route(Get, "/admin/status.js", "admin_status"),
            Endpoint::Admin(A::StatusHistory) => {
                route(Get, "/admin/status/history", "admin_status")
            }
            Endpoint::Admin(A::QuarantineList) => {
                route(Get, "/admin/quarantine", "admin_quarantine")
            }
            Endpoint::Admin(A::QuarantineRetry) => route(
                Post,
                "/admin/quarantine/{partition}/{offset}/retry",
                "admin_quarantine",
            ),
            Endpoint::Admin(A::AccountLimits) => {
                route(Put, "/admin/accounts/{user_id}/limits", "admin_limits")
            }
        }
    }
}

/// Which of serve's addresses a connection came in on: with `TRANSFERD_ADMIN_LISTEN` set,
/// `/admin/*` and `/metrics` are the admin address's only, the API the public one's only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The one address, serving everything (no admin address set).
    All,
    /// The API's address beside an admin address: the API and the probes.
    Public,
    /// The internal admin address: `/admin/*`, `/metrics` and the probes.
    Admin,
}

impl Port {
    /// Whether a connection on this port reaches `endpoint` (else it is answered 404, as an
    /// unknown path is).
    pub const fn serves(self, endpoint: Endpoint) -> bool {
        let internal = matches!(
            endpoint,
            Endpoint::Admin(_) | Endpoint::Service(ServiceRoute::Metrics)
        );
        let probe = matches!(
            endpoint,
            Endpoint::Service(ServiceRoute::Health | ServiceRoute::Ready)
        );
        match self {
            Port::All => true,
            Port::Public => !internal,
            Port::Admin => internal || probe,
        }
    }
}

impl ServiceRoute {
    /// The route's path, for its handler's `#[utoipa::path]`.
    pub const fn path(self) -> &'static str {
        Endpoint::Service(self).route().path
    }
}

impl UserRoute {
    /// The route's path, for its handler's `#[utoipa::path]`.
    pub const fn path(self) -> &'static str {
        Endpoint::User(self).route().path
    }
}

impl AdminRoute {
    /// The route's path, for its handler's `#[utoipa::path]`.
    pub const fn path(self) -> &'static str {
        Endpoint::Admin(self).route().path
    }

    /// What the route accepts, from the request's method: every method but GET and HEAD
    /// changes state and needs a bearer token from no foreign origin, so a route added to the
    /// table is protected without doing anything. HTTP Basic credentials, which a browser
    /// resends by itself once an admin has opened the status page, open only the page, its
    /// script and the read-only JSON it polls.
    pub fn access(self, method: &Method) -> AdminAccess {
        if method != Method::GET && method != Method::HEAD {
            return AdminAccess::Change;
        }
        match self {
            AdminRoute::StatusPage
            | AdminRoute::StatusScript
            | AdminRoute::StatusHistory
            | AdminRoute::GuestStatus
            | AdminRoute::GuestShadowStats => AdminAccess::StatusPage,
            _ => AdminAccess::Read,
        }
    }
}

/// A request's path split at `/`, with the route it matched: its `{name}` segments by name.
#[derive(Debug, Clone, Copy)]
pub struct PathParams<'s, 'a> {
    template: &'static str,
    segments: &'s [&'a str],
}

impl<'a> PathParams<'_, 'a> {
    /// The segment standing where the route's path says `{name}`; empty when it says no such
    /// name (a handler then refuses it as it would an empty segment).
    pub fn get(&self, name: &str) -> &'a str {
        template_segments(self.template)
            .zip(self.segments)
            .find(|(pattern, _)| parameter(pattern) == Some(name))
            .map(|(_, segment)| *segment)
            .unwrap_or_default()
    }
}

fn template_segments(template: &'static str) -> impl Iterator<Item = &'static str> {
    template.trim_matches('/').split('/')
}

/// `name` for a `{name}` segment.
fn parameter(pattern: &str) -> Option<&str> {
    pattern.strip_prefix('{')?.strip_suffix('}')
}

/// How many of `template`'s segments are literal, not `{name}`.
fn literal_segments(template: &'static str) -> usize {
    template_segments(template)
        .filter(|pattern| parameter(pattern).is_none())
        .count()
}

/// Whether `segments` is a path of `template`.
fn matches(template: &'static str, segments: &[&str]) -> bool {
    template_segments(template).count() == segments.len()
        && template_segments(template)
            .zip(segments)
            .all(|(pattern, segment)| parameter(pattern).is_some() || pattern == *segment)
}

/// The endpoint of a path and method: 404 for an unknown path, 405 with the path's methods
/// in `Allow` for a known path's other methods (before authentication, so they answer the
/// same to everyone).
pub fn resolve<'s, 'a>(
    method: &Method,
    segments: &'s [&'a str],
) -> Result<(Endpoint, PathParams<'s, 'a>), ApiError> {
    // A literal segment is more specific than a `{name}`: `/transfers/batch` is that route's
    // path only, so its 405 lists only its methods.
    let specificity = |endpoint: &Endpoint| literal_segments(endpoint.route().path);
    let most = Endpoint::ALL
        .iter()
        .filter(|endpoint| matches(endpoint.route().path, segments))
        .map(specificity)
        .max();
    let mut allowed = Vec::new();
    for endpoint in Endpoint::ALL {
        let route = endpoint.route();
        if !matches(route.path, segments) || Some(specificity(&endpoint)) != most {
            continue;
        }
        if route.verb.accepts(method) {
            let params = PathParams {
                template: route.path,
                segments,
            };
            return Ok((endpoint, params));
        }
        allowed.push(route.verb);
    }
    if allowed.is_empty() {
        return Err(ApiError::NotFound);
    }
    allowed.sort();
    let allow: Vec<&str> = allowed.into_iter().map(Verb::allow).collect();
    Err(ApiError::MethodNotAllowed {
        allow: allow.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(path: &str) -> Vec<&str> {
        path.trim_matches('/').split('/').collect()
    }

    /// Whether some path is a path of both templates.
    fn overlap(a: &'static str, b: &'static str) -> bool {
        template_segments(a).count() == template_segments(b).count()
            && template_segments(a)
                .zip(template_segments(b))
                .all(|(x, y)| parameter(x).is_some() || parameter(y).is_some() || x == y)
    }

    #[test]
    fn overlapping_paths_answer_different_methods() {
        for (i, a) in Endpoint::ALL.iter().enumerate() {
            for b in &Endpoint::ALL[i + 1..] {
                let (a, b) = (a.route(), b.route());
                if overlap(a.path, b.path) {
                    assert_ne!(a.verb, b.verb, "{} and {} overlap", a.path, b.path);
                }
            }
        }
        let resolved = |method: Method, path: &str| resolve(&method, &split(path)).map(|r| r.0);
        assert_eq!(
            resolved(Method::POST, "/transfers/batch").ok(),
            Some(Endpoint::User(UserRoute::CreateBatch))
        );
        assert!(
            matches!(
                resolve(&Method::GET, &split("/transfers/batch")),
                Err(ApiError::MethodNotAllowed { allow }) if allow == "POST"
            ),
            "the literal path is the batch route's only"
        );
        let segments = split("/transfers/0190");
        let (shown, params) = resolve(&Method::GET, &segments).expect("routed");
        assert_eq!(shown, Endpoint::User(UserRoute::ShowTransfer));
        assert_eq!(params.get("transaction_id"), "0190");
        assert_eq!(
            resolved(Method::POST, "/transfers/batch/post").ok(),
            Some(Endpoint::User(UserRoute::PostTransfer))
        );
    }

    #[test]
    fn an_admin_port_takes_the_admin_routes_and_metrics_off_the_public_one() {
        for endpoint in Endpoint::ALL {
            let internal =
                endpoint.route().path.starts_with("/admin") || endpoint.route().path == "/metrics";
            let probe = matches!(endpoint.route().path, "/healthz" | "/readyz");
            assert!(Port::All.serves(endpoint));
            assert_eq!(Port::Public.serves(endpoint), !internal, "{endpoint:?}");
            assert_eq!(
                Port::Admin.serves(endpoint),
                internal || probe,
                "{endpoint:?}"
            );
        }
    }

    #[test]
    fn path_parameters_are_read_by_name() {
        let segments = split("/admin/quarantine/3/42/retry");
        let (endpoint, params) = resolve(&Method::POST, &segments).expect("routed");
        assert_eq!(endpoint, Endpoint::Admin(AdminRoute::QuarantineRetry));
        assert_eq!(params.get("partition"), "3");
        assert_eq!(params.get("offset"), "42");
        assert_eq!(params.get("version"), "");
    }

    #[test]
    fn an_unknown_path_is_404_and_a_known_path_lists_its_methods() {
        let not_allowed = |method: Method, path: &str| match resolve(&method, &split(path)) {
            Err(ApiError::MethodNotAllowed { allow }) => allow,
            _ => panic!("{method} {path} is not a 405"),
        };
        assert_eq!(not_allowed(Method::PUT, "/transfers"), "GET, HEAD, POST");
        assert_eq!(not_allowed(Method::POST, "/healthz"), "GET, HEAD");
        assert_eq!(
            not_allowed(Method::DELETE, "/admin/guest"),
            "GET, HEAD, PUT"
        );
        assert_eq!(
            not_allowed(Method::PUT, "/admin/guest/v1/shadow"),
            "GET, HEAD, POST"
        );
        assert_eq!(not_allowed(Method::GET, "/admin/guest/candidate"), "DELETE");
        assert_eq!(not_allowed(Method::GET, "/admin/guest/rollback"), "POST");
        for path in [
            "/",
            "/nope",
            "/transfers/a/b",
            "/admin/guest/v1",
            "/accounts//x",
        ] {
            assert!(
                matches!(resolve(&Method::GET, &split(path)), Err(ApiError::NotFound)),
                "{path}"
            );
        }
    }
}
