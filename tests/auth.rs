//! End-to-end tests of authentication and roles against real `doppel` processes:
//!
//! * every route but `/v1/health` needs a token; each kind of bad token (missing,
//!   malformed header, malformed JWT, expired, not yet valid, wrong audience, wrong
//!   issuer, wrong signature, `alg: none`, HS256/EdDSA confusion, unknown `kid`) is a
//!   401 problem with its own code; EdDSA and HS256 tokens both work;
//! * each role is refused (403 `forbidden`) exactly what it may not do;
//! * the embedded default prints an admin token on its first start only, and
//!   `doppel token` mints working tokens from the data directory's key.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use doppel_server::tenancy::auth::{now_secs, Claims};
use doppel_tests::*;

fn claims(tenant: &str, role: Role) -> Claims {
    let now = now_secs();
    Claims {
        sub: "tester".into(),
        tenant: tenant.into(),
        role,
        iss: "doppel".into(),
        aud: "doppel".into(),
        exp: now + 600,
        nbf: now,
        iat: now,
    }
}

fn b64(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(json.to_string())
}

fn hs256_with(secret: &[u8], kid: &str, claims: &impl serde::Serialize) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

#[test]
fn health_and_the_contract_are_open_and_every_other_route_needs_a_token() {
    let node = Node::start();
    let anonymous = node.without_token();
    anonymous.get("/v1/health").ok();
    // The OpenAPI document holds no secret: generators fetch it without a token.
    anonymous.get("/v1/openapi.json").ok();
    anonymous
        .get("/v1/tenants")
        .expect_problem(401, "missing-token");
    anonymous
        .get("/v1/tenants/default/databases")
        .expect_problem(401, "missing-token");
    anonymous
        .post("/v1/tenants", &json!({"name": "x"}))
        .expect_problem(401, "missing-token");
}

#[test]
fn bad_tokens_are_refused_with_precise_codes() {
    let node = Node::start();
    let path = "/v1/tenants/default/databases";
    let ring = keyring();
    let good = claims("default", Role::Admin);
    let sign = |c: &Claims| ring.sign(HS_KID, c).expect("sign");

    // Both algorithms work.
    node.with_token(&sign(&good)).get(path).ok();
    node.with_token(&ring.sign(ED_KID, &good).unwrap())
        .get(path)
        .ok();

    let now = now_secs();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            sign(&Claims {
                exp: now - 3600,
                nbf: now - 7200,
                ..good.clone()
            }),
            "token-expired",
        ),
        (
            "not yet valid",
            sign(&Claims {
                nbf: now + 3600,
                ..good.clone()
            }),
            "token-not-yet-valid",
        ),
        (
            "wrong audience",
            sign(&Claims {
                aud: "someone-else".into(),
                ..good.clone()
            }),
            "wrong-audience",
        ),
        (
            "wrong issuer",
            sign(&Claims {
                iss: "evil".into(),
                ..good.clone()
            }),
            "wrong-issuer",
        ),
        (
            "wrong signature",
            hs256_with(&[7u8; 32], HS_KID, &good),
            "bad-signature",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT", "kid": HS_KID})),
                b64(&serde_json::to_value(&good).unwrap())
            ),
            "algorithm-not-allowed",
        ),
        (
            "HS256 signed with the EdDSA public key",
            hs256_with(ED_PUBLIC_PEM.as_bytes(), ED_KID, &good),
            "algorithm-not-allowed",
        ),
        (
            "unknown kid",
            hs256_with(&[7u8; 32], "retired-key", &good),
            "unknown-key",
        ),
        ("not a JWT", "abc".into(), "invalid-token"),
        (
            "header not JSON",
            format!("{}.e30.sig", URL_SAFE_NO_PAD.encode("nope")),
            "invalid-token",
        ),
        (
            "no role claim",
            hs256_with(
                &base64::engine::general_purpose::STANDARD
                    .decode(HS_SECRET)
                    .unwrap(),
                HS_KID,
                &json!({"sub": "x", "tenant": "default", "iss": "doppel", "aud": "doppel",
                        "exp": now + 600, "nbf": now, "iat": now}),
            ),
            "invalid-token",
        ),
    ];
    for (what, token, code) in cases {
        let r = node.with_token(&token).get(path);
        assert_eq!(r.code(), Some(code), "{what}: {r}");
        r.expect_problem(401, code);
        assert!(!r.text.contains(&token), "{what}: the token is not echoed");
    }
    for header in [
        "Basic dXNlcjpwdw==",
        "Bearer",
        "Bearer    ",
        "token-without-scheme",
    ] {
        node.with_authorization(header)
            .get(path)
            .expect_problem(401, "invalid-token");
    }
}

#[test]
fn each_role_is_refused_exactly_what_it_may_not_do() {
    let node = Node::start();
    node.create_tenant("acme");
    let shop = node.create_db("acme", shop_spec("shop"));
    shop.put("orders", "o1", json!({}), json!(1)).ok();
    // (role, read, write, operate, manage, node-admin)
    let matrix = [
        (Role::Admin, true, true, true, true, false),
        (Role::Operator, true, false, true, false, false),
        (Role::Writer, true, true, false, false, false),
        (Role::Reader, true, false, false, false, false),
    ];
    for (role, read, write, operate, manage, node_admin) in matrix {
        let as_role = node.with_token(&token("acme", role));
        let db = as_role.db("acme", "shop");
        let check = |allowed: bool, r: Resp, what: &str| {
            if allowed {
                assert!((200..300).contains(&r.status), "{role:?} may {what}: {r}");
            } else {
                r.expect_problem(403, "forbidden");
            }
        };
        check(read, db.get("orders", "o1"), "read");
        check(read, db.info(), "read");
        check(read, db.log(1, 10), "read the log");
        check(write, db.put("orders", "o2", json!({}), json!(2)), "write");
        check(
            write,
            db.batch(json!([op::upsert("lines", "l1", json!(1))])),
            "write",
        );
        check(operate, db.snapshot(), "snapshot");
        check(
            operate,
            as_role.put(&db.path("/quorum"), &json!({"k": 1})),
            "set the sync quorum",
        );
        check(read, as_role.get("/v1/tenants/acme/links"), "list links");
        check(
            read,
            as_role.get("/v1/tenants/acme/replicas"),
            "list replicas",
        );
        let name = format!("db-{}", role.name());
        let path = "/v1/tenants/acme/databases";
        check(
            manage,
            as_role.post(path, &shop_spec(&name)),
            "create a database",
        );
        node.create_db("acme", shop_spec(&format!("{name}-2")));
        check(
            manage,
            as_role.delete(&format!("{path}/{name}-2")),
            "delete a database",
        );
        check(
            node_admin,
            as_role.post(
                "/v1/tenants",
                &json!({"name": format!("t-{}", role.name())}),
            ),
            "create a tenant",
        );
        // A token covers only its tenant: the list shows it alone.
        let tenants = as_role.get("/v1/tenants");
        assert_eq!(tenants.ok(), &json!([{"name": "acme"}]), "{role:?}");
    }
    // The node administrator reads any tenant but still obeys its role.
    let star_reader = node.with_token(&token("*", Role::Reader));
    star_reader.db("acme", "shop").get("orders", "o1").ok();
    star_reader
        .post("/v1/tenants", &json!({"name": "nope"}))
        .expect_problem(403, "forbidden");
    node.post("/v1/tenants", &json!({"name": "fresh"}))
        .expect(201);
}

/// Runs the real binary with `args` and no config; returns stdout lines until it exits
/// or, for `serve`, the lines up to and including the first line after the ready line.
fn doppel(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(node_binary())
        .args(args)
        .env_remove("DOPPEL_DATA")
        .env_remove("DOPPEL_TOKEN")
        .output()
        .expect("run doppel");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn first_start_prints_an_admin_token_and_doppel_token_mints_more() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let start = || {
        let mut child = Command::new(node_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .env_remove("DOPPEL_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.next().expect("a ready line").unwrap();
        let base = ready
            .strip_prefix("doppel listening on ")
            .unwrap_or_else(|| panic!("ready line: {ready}"))
            .to_string();
        (child, base, lines, logs)
    };
    let stop = |mut child: std::process::Child| {
        let pid = libc_pid(&child);
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        assert!(child.wait().unwrap().success());
    };

    let (child, base, mut lines, logs) = start();
    let line = lines.next().expect("an admin token line").unwrap();
    let admin = line
        .strip_prefix("doppel admin token: ")
        .unwrap_or_else(|| panic!("admin token line: {line}"))
        .to_string();
    let api = Client::new(&base).with_token(&admin);
    api.post("/v1/tenants", &json!({"name": "acme"}))
        .expect(201);
    api.create_db("acme", shop_spec("shop"));
    stop(child);
    let logs = logs.join().unwrap();
    assert!(!logs.contains(&admin), "the token is not in the logs");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(!rest.iter().any(|l| l.contains(&admin)));

    // Offline: mint a reader token for acme from the data directory's key.
    let (ok, out, err) = doppel(&[
        "token",
        "--tenant",
        "acme",
        "--role",
        "reader",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "doppel token: {err}");
    let reader = out.trim().to_string();
    let (ok, _, err) = doppel(&[
        "token",
        "--tenant",
        "acme",
        "--role",
        "boss",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("boss"), "{err}");

    // Second start: same key, no token printed.
    let (child, base, lines, _logs) = start();
    let api = Client::new(&base);
    api.with_token(&admin).db("acme", "shop").info().ok();
    let reader_api = api.with_token(&reader);
    reader_api.db("acme", "shop").info().ok();
    reader_api
        .db("acme", "shop")
        .put("orders", "o1", json!({}), json!(1))
        .expect_problem(403, "forbidden");
    // The harness's test keys are not this node's.
    api.db("acme", "shop")
        .info()
        .expect_problem(401, "unknown-key");
    stop(child);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        !rest.iter().any(|l| l.contains("admin token")),
        "no token on later starts: {rest:?}"
    );
}

fn libc_pid(child: &std::process::Child) -> libc::pid_t {
    libc::pid_t::try_from(child.id()).expect("pid fits")
}
