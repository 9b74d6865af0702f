//! The browser console (SPEC H2): the files of `web/` at the repository root, embedded in
//! the binary at build time and served at `/` (the page) and `/console/{file}` (its
//! stylesheet and JavaScript modules). There is no build step: what is in `web/` is what
//! the browser gets.
//!
//! These routes are `Public`, like `/v1/health`: the files hold no data. Every figure
//! the console shows comes from the REST API and the live stream (`api::events`), called
//! with the token the user pasted, so the server's permission checks apply unchanged.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, Path};

macro_rules! asset {
    ($name:literal, $type:literal) => {
        (
            $name,
            concat!($type, "; charset=utf-8"),
            include_str!(concat!("../../../web/", $name)),
        )
    };
}

/// Every file of `web/` but the page itself: name, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    asset!("style.css", "text/css"),
    asset!("app.js", "text/javascript"),
    asset!("api.js", "text/javascript"),
    asset!("live.js", "text/javascript"),
    asset!("ui.js", "text/javascript"),
    asset!("charts.js", "text/javascript"),
    asset!("overview.js", "text/javascript"),
    asset!("links.js", "text/javascript"),
    asset!("data.js", "text/javascript"),
    asset!("plugins.js", "text/javascript"),
    asset!("graph.js", "text/javascript"),
    asset!("topology.js", "text/javascript"),
    asset!("deadletters.js", "text/javascript"),
    asset!("ops.js", "text/javascript"),
    asset!("restore.js", "text/javascript"),
    asset!("verify.js", "text/javascript"),
    asset!("names.js", "text/javascript"),
];

const INDEX: &str = include_str!("../../../web/index.html");

/// What the page may load and call: only this origin; no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The files change with the binary; always revalidate rather than run a stale console.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /`: the console's page.
pub async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /console/{file}`: one of the console's files.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    let (_, content_type, body) = ASSETS.iter().find(|(n, _, _)| *n == name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("the console has no file '{name}'"),
        )
    })?;
    Ok(file(content_type, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_files_that_are_embedded() {
        // Every `/console/x` the page or a module names is in ASSETS.
        let mut texts = vec![INDEX];
        texts.extend(ASSETS.iter().map(|(_, _, body)| *body));
        for text in texts {
            for (at, _) in text.match_indices("/console/") {
                let rest = &text[at + "/console/".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
                    .collect();
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == name),
                    "'/console/{name}' is not embedded"
                );
            }
        }
        // Modules import each other relatively ('./x.js'): those must be embedded too.
        for (_, _, body) in ASSETS {
            for (at, _) in body.match_indices("from './") {
                let rest = &body[at + "from './".len()..];
                let name: String = rest.chars().take_while(|c| *c != '\'').collect();
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == name),
                    "import './{name}' is not embedded"
                );
            }
        }
    }
}
