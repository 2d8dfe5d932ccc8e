//! The web console at `/console`: a few static files, written by hand (no
//! framework, no build step, nothing fetched from elsewhere, so it works on
//! a machine with no network), compiled into the binary so every node
//! serves the same console as its own code.
//!
//! The console is public content and holds no secret: it asks the operator
//! for an admin token and calls the admin API with it, from the browser, in
//! an `Authorization: Bearer` header (see `node/console/console.js`). So
//! this module only serves bytes, each with headers that keep a browser
//! strict about them: a Content-Security-Policy allowing scripts, styles,
//! images and requests from this origin only (no inline script, no
//! `eval`), no framing, no sniffing of types, no referrer.
//!
//! [`ASSETS`] is the one table of what is served; the router and the
//! OpenAPI document are both made from it. A path not in it is the
//! router's 404.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::HttpState;

/// One file of the console.
pub struct Asset {
    /// Where it is served (and documented).
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// What it is, for the OpenAPI document.
    pub summary: &'static str,
    pub body: &'static [u8],
}

/// Every file the console is made of. The page names the others by these
/// absolute paths.
pub const ASSETS: [Asset; 4] = [
    Asset {
        path: "/console",
        content_type: "text/html; charset=utf-8",
        summary: "The web console: sign in with an admin token",
        body: include_bytes!("../../console/index.html"),
    },
    Asset {
        path: "/console/console.js",
        content_type: "text/javascript; charset=utf-8",
        summary: "The web console's script",
        body: include_bytes!("../../console/console.js"),
    },
    Asset {
        path: "/console/console.css",
        content_type: "text/css; charset=utf-8",
        summary: "The web console's style sheet",
        body: include_bytes!("../../console/console.css"),
    },
    Asset {
        path: "/console/icon.svg",
        content_type: "image/svg+xml",
        summary: "The web console's icon",
        body: include_bytes!("../../console/icon.svg"),
    },
];

/// The policy every console response carries: everything from this origin
/// only, scripts from files only (no inline script or `eval`), never in a
/// frame, no `<base>` or plugin, forms posted nowhere else. Charts are SVG
/// elements the script makes, which need no exception.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The security headers on every console response, beside `Content-Type`.
/// `no-cache`: a browser asks again each time (the files are small), so a
/// node upgraded to a new console never runs a cached older script against
/// its API.
pub const HEADERS: [(&str, &str); 7] = [
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-cache"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
];

/// A `GET` route (and so `HEAD`) for each of [`ASSETS`].
pub fn routes() -> Router<HttpState> {
    ASSETS.iter().fold(Router::new(), |router, asset| router.route(asset.path, get(move || serve(asset))))
}

async fn serve(asset: &'static Asset) -> Response {
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(asset.content_type));
    for (name, value) in HEADERS {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}
