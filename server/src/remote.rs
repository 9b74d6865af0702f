//! Calls to a Doppel node's REST API: the one HTTP client of the code base.
//!
//! Every call from one node to another goes through [`Client`]: a link registering its
//! replica, taking a parallel database's locks, re-driving a dead letter, verifying and
//! repairing a mirror, a topology carrying out its plan; and so do the `doppel` client
//! subcommands and `doppel bench`, which call the node they are pointed at.
//!
//! A refusal keeps what the remote node said: its HTTP status and its problem+json
//! `code` and `detail` ([`RemoteError`]). A caller decides on the code, never on the
//! text:
//!
//! ```
//! # use doppel_server::remote::RemoteError;
//! # fn site_deadlock(e: &RemoteError) -> bool {
//! matches!(e, RemoteError::Conflict { code, .. } if code == "deadlock")
//! # }
//! ```
//!
//! Calls are blocking (ureq): async callers run them on `spawn_blocking`. Each client
//! has a deadline per call; nothing is retried here, since only the caller knows whether
//! a call may be repeated.

use std::time::Duration;

use serde_json::Value;

/// The deadline of one call unless [`Client::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call to a node did not give an answer to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// Nothing answered: connection refused or reset, name not found, deadline passed.
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The node answered success with a body that is not JSON.
    #[error("{url} answered with something that is not JSON: {reason}")]
    Unreadable { url: String, reason: String },
    /// 404: the thing asked for does not exist there.
    #[error("404 {code}: {detail}")]
    NotFound { code: String, detail: String },
    /// 409: the request conflicts with the node's state (`deadlock`, `lock-timeout`,
    /// `already-exists`, `read-only-replica`…).
    #[error("409 {code}: {detail}")]
    Conflict { code: String, detail: String },
    /// Any other refusal (4xx or 5xx).
    #[error("{status} {code}: {detail}")]
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
    /// This node could not sign the token the call needs.
    #[error("cannot sign a token for the call: {0}")]
    Token(String),
}

impl RemoteError {
    /// From a refusal's status and body (problem+json, or anything else).
    fn refusal(status: u16, body: &str) -> RemoteError {
        let problem: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let code = problem["code"].as_str().unwrap_or("error").to_string();
        let detail = match problem["detail"].as_str() {
            Some(d) => d.to_string(),
            None if body.trim().is_empty() => format!("HTTP {status}"),
            // Not ours (a proxy's page, say): a short excerpt, on one line.
            None => body
                .chars()
                .take(200)
                .collect::<String>()
                .replace('\n', " "),
        };
        match status {
            404 => RemoteError::NotFound { code, detail },
            409 => RemoteError::Conflict { code, detail },
            status => RemoteError::Refused {
                status,
                code,
                detail,
            },
        }
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            RemoteError::NotFound { .. } => Some(404),
            RemoteError::Conflict { .. } => Some(409),
            RemoteError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The problem+json `code` of a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            RemoteError::NotFound { code, .. }
            | RemoteError::Conflict { code, .. }
            | RemoteError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// What the node said (a refusal's `detail`), else the whole message.
    pub fn detail(&self) -> String {
        match self {
            RemoteError::NotFound { detail, .. }
            | RemoteError::Conflict { detail, .. }
            | RemoteError::Refused { detail, .. } => detail.clone(),
            other => other.to_string(),
        }
    }

    /// Nothing answered (as opposed to a refusal): the node may be down.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RemoteError::Unreachable { .. })
    }
}

/// For the command-line tools, whose errors are the exit message.
impl From<RemoteError> for String {
    fn from(e: RemoteError) -> String {
        e.to_string()
    }
}

/// A blocking client for one node's API (cheap to clone: connections are pooled).
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    /// The `authorization` header sent with every call.
    authorization: Option<String>,
}

impl Client {
    /// A client for the node at `base` (`http://host:port`, or a deeper prefix such as
    /// `http://host:port/v1/tenants/acme`), without a token.
    pub fn new(base: &str) -> Client {
        Client {
            agent: agent(DEFAULT_TIMEOUT),
            base: base.trim_end_matches('/').to_string(),
            authorization: None,
        }
    }

    /// Each call ends with [`RemoteError::Unreachable`] after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.agent = agent(timeout);
        self
    }

    /// Send `Bearer <token>`.
    pub fn with_token(self, token: &str) -> Client {
        self.with_authorization(Some(format!("Bearer {}", token.trim())))
    }

    /// Send this `authorization` header as it is (a caller's own, passed on).
    pub fn with_authorization(mut self, authorization: Option<String>) -> Client {
        self.authorization = authorization;
        self
    }

    /// The URL of `target`: a path (`/v1/…`) is joined to the base; an absolute URL
    /// (`http…`) is used as it is, for callers that reach several nodes.
    pub fn url(&self, target: &str) -> String {
        if target.starts_with("http://") || target.starts_with("https://") {
            target.to_string()
        } else {
            format!("{}{target}", self.base)
        }
    }

    /// Call with an optional JSON body. The answer's JSON (`null` for an empty one).
    pub fn call(
        &self,
        method: &str,
        target: &str,
        body: Option<&Value>,
    ) -> Result<Value, RemoteError> {
        let text = body.map(Value::to_string);
        self.call_raw(method, target, text.as_deref())
    }

    /// Call with any serialisable body.
    pub fn send(
        &self,
        method: &str,
        target: &str,
        body: &impl serde::Serialize,
    ) -> Result<Value, RemoteError> {
        let text = serde_json::to_string(body).expect("a request body serialises to JSON");
        self.call_raw(method, target, Some(&text))
    }

    /// Call with a body that is already JSON text.
    pub fn call_raw(
        &self,
        method: &str,
        target: &str,
        body: Option<&str>,
    ) -> Result<Value, RemoteError> {
        let url = self.url(target);
        let request = self.request(method, &url);
        let result = match body {
            Some(body) => request
                .set("content-type", "application/json")
                .send_string(body),
            None => request.call(),
        };
        answer(&url, result)
    }

    /// Call with raw bytes of `content_type` (a plugin upload).
    pub fn call_bytes(
        &self,
        method: &str,
        target: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<Value, RemoteError> {
        let url = self.url(target);
        let result = self
            .request(method, &url)
            .set("content-type", content_type)
            .send_bytes(bytes);
        answer(&url, result)
    }

    /// Call with a body of `len` bytes of `content_type` read from `body` as it is sent
    /// (an upload that reports its progress through the reader).
    pub fn call_reader(
        &self,
        method: &str,
        target: &str,
        content_type: &str,
        len: u64,
        body: impl std::io::Read,
    ) -> Result<Value, RemoteError> {
        let url = self.url(target);
        let result = self
            .request(method, &url)
            .set("content-type", content_type)
            .set("content-length", &len.to_string())
            .send(body);
        answer(&url, result)
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let request = self.agent.request(method, url);
        match &self.authorization {
            Some(a) => request.set("authorization", a),
            None => request,
        }
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(timeout).build()
}

/// The JSON of a success, or what went wrong.
fn answer(url: &str, result: Result<ureq::Response, ureq::Error>) -> Result<Value, RemoteError> {
    match result {
        Ok(response) => {
            let text = response
                .into_string()
                .map_err(|e| RemoteError::Unreachable {
                    url: url.to_string(),
                    reason: format!("the answer broke off: {e}"),
                })?;
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_str(&text).map_err(|e| RemoteError::Unreadable {
                url: url.to_string(),
                reason: e.to_string(),
            })
        }
        Err(ureq::Error::Status(status, response)) => {
            let body = response.into_string().unwrap_or_default();
            Err(RemoteError::refusal(status, &body))
        }
        Err(ureq::Error::Transport(e)) => Err(RemoteError::Unreachable {
            url: url.to_string(),
            reason: transport_reason(&e),
        }),
    }
}

/// What went wrong on the way, in words a person reads (not ureq's kind names), without
/// the URL ureq's own message repeats: what it means, then the innermost cause
/// ("Connection refused (os error 111)").
fn transport_reason(e: &ureq::Transport) -> String {
    use std::error::Error as _;
    let mut cause = e.message().map(str::to_owned);
    if let Some(mut source) = e.source() {
        while let Some(inner) = source.source() {
            source = inner;
        }
        cause = Some(source.to_string());
    }
    let what = match e.kind() {
        ureq::ErrorKind::Dns => "its host name does not resolve",
        ureq::ErrorKind::ConnectionFailed => "nothing accepts connections there",
        ureq::ErrorKind::Io => "the connection failed or timed out",
        ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => "the URL is not valid",
        _ => "the call did not get through",
    };
    match cause {
        Some(cause) => format!("{what} ({cause})"),
        None => what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A one-shot HTTP server on loopback that answers `status` with `body`.
    fn answering(status: &str, body: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let status = status.to_string();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/problem+json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(reply.as_bytes()).unwrap();
        });
        format!("http://{addr}")
    }

    #[test]
    fn a_problem_keeps_its_status_and_code() {
        let base = answering(
            "409 Conflict",
            r#"{"code":"deadlock","detail":"deadlock across sites: t1"}"#,
        );
        let err = Client::new(&base).call("POST", "/x", None).unwrap_err();
        assert!(
            matches!(&err, RemoteError::Conflict { code, .. } if code == "deadlock"),
            "{err:?}"
        );
        assert_eq!(err.status(), Some(409));
        assert_eq!(err.detail(), "deadlock across sites: t1");
        assert_eq!(err.to_string(), "409 deadlock: deadlock across sites: t1");
    }

    #[test]
    fn a_refusal_that_is_not_problem_json_still_says_what_came() {
        let base = answering("502 Bad Gateway", "upstream\ndown");
        let err = Client::new(&base).call("GET", "/x", None).unwrap_err();
        assert_eq!(
            err,
            RemoteError::Refused {
                status: 502,
                code: "error".into(),
                detail: "upstream down".into()
            }
        );
    }

    #[test]
    fn an_empty_success_is_null_and_a_garbled_one_is_unreadable() {
        let base = answering("204 No Content", "");
        assert_eq!(
            Client::new(&base).call("DELETE", "/x", None).unwrap(),
            Value::Null
        );
        let base = answering("200 OK", "{not json");
        let err = Client::new(&base).call("GET", "/x", None).unwrap_err();
        assert!(matches!(err, RemoteError::Unreadable { .. }), "{err:?}");
    }

    #[test]
    fn nothing_listening_is_unreachable_and_names_the_url() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let err = Client::new(&base)
            .with_timeout(Duration::from_secs(5))
            .call("GET", "/v1/health", None)
            .unwrap_err();
        assert!(err.is_unreachable(), "{err:?}");
        assert!(
            err.to_string().contains(&format!("{base}/v1/health")),
            "{err}"
        );
        // The URL once, and words, not ureq's kind names.
        assert_eq!(err.to_string().matches(&base).count(), 1, "{err}");
        assert!(
            err.to_string()
                .contains("nothing accepts connections there"),
            "{err}"
        );
        assert!(!err.to_string().contains("Connection Failed"), "{err}");
        assert_eq!(err.status(), None);
    }

    #[test]
    fn an_absolute_url_is_used_as_it_is() {
        let c = Client::new("http://a:1/v1/tenants/t/");
        assert_eq!(c.url("/links"), "http://a:1/v1/tenants/t/links");
        assert_eq!(c.url("http://b:2/v1/node"), "http://b:2/v1/node");
    }
}
