//! The API reference a person reads: `GET /docs`, Swagger UI over this node's own
//! `/v1/openapi.json`. Swagger UI is the npm package `swagger-ui-dist` (pinned in
//! `web/reference/package.json`), vendored into the binary at build time by
//! `server/build.rs`: nothing is fetched from elsewhere when a browser opens it. A
//! binary built without it (no `npm ci` in `web/reference`) answers `/docs` with a
//! problem that says so.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, Path};

/// Swagger UI writes inline styles; its scripts are files of this node.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

const INDEX: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Doppel API reference</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"#;

/// Swagger UI over this node's document; "Authorize" takes a bearer token.
const INIT: &str = "window.ui = SwaggerUIBundle({url: '/v1/openapi.json', dom_id: '#swagger-ui', deepLinking: true, tryItOutEnabled: false});\n";

#[cfg(doppel_reference)]
const FILES: &[(&str, &str, &str)] = &[
    (
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_str!(concat!(env!("OUT_DIR"), "/reference/swagger-ui-bundle.js")),
    ),
    (
        "swagger-ui.css",
        "text/css; charset=utf-8",
        include_str!(concat!(env!("OUT_DIR"), "/reference/swagger-ui.css")),
    ),
    ("init.js", "text/javascript; charset=utf-8", INIT),
];

#[cfg(not(doppel_reference))]
const FILES: &[(&str, &str, &str)] = &[("init.js", "text/javascript; charset=utf-8", INIT)];

fn missing() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "this binary was built without its API reference: run `npm ci` in web/reference, \
         then build again (the document itself is at /v1/openapi.json)",
    )
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /docs`.
pub async fn index() -> Result<Response, ApiError> {
    if !FILES
        .iter()
        .any(|(name, ..)| *name == "swagger-ui-bundle.js")
    {
        return Err(missing());
    }
    Ok(file("text/html; charset=utf-8", INDEX))
}

/// `GET /docs/{file}`: Swagger UI's script and stylesheet, and the page's set-up.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    match FILES.iter().find(|(n, ..)| *n == name) {
        Some((_, content_type, body)) => Ok(file(content_type, body)),
        None if name == "swagger-ui-bundle.js" || name == "swagger-ui.css" => Err(missing()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("the reference has no file '{name}'"),
        )),
    }
}
