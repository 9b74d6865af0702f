//! A client generated from the live OpenAPI document, used: `openapi-python-client`
//! (PyPI, the version `.ci/run` pins) generates the package `doppel_client` from
//! `GET /v1/openapi.json` of a real node into a temporary directory, and
//! `tests/client/tour.py` walks the README's tour through it alone (tenant, database,
//! records, a batch and an interactive transaction, a link to a second node that the
//! replica follows, a plugin upload and its dry run). No generated code is committed.
//!
//! The generator's venv: `DOPPEL_CLIENT_VENV`, else `target/ci-venv/contract` (where
//! `.ci/run` installs it).

use std::path::PathBuf;
use std::process::Command;

use doppel_tests::*;

fn venv() -> PathBuf {
    let dir = std::env::var_os("DOPPEL_CLIENT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ci-venv/contract")
        });
    assert!(
        dir.join("bin/openapi-python-client").exists(),
        "openapi-python-client is not installed in {} (.ci/run installs it: \
         python3 -m venv DIR && DIR/bin/pip install openapi-python-client==0.29.1)",
        dir.display()
    );
    dir
}

#[test]
fn generated_python_client_walks_the_readme_tour() {
    let venv = venv();
    let a = Node::start();
    let b = Node::start();
    let work = tempfile::tempdir().unwrap();
    let doc = a.client().without_token().get("/v1/openapi.json");
    let doc = doc.ok();
    let doc_path = work.path().join("openapi.json");
    std::fs::write(&doc_path, serde_json::to_vec(doc).unwrap()).unwrap();
    let generated = Command::new(venv.join("bin/openapi-python-client"))
        .args(["generate", "--meta", "none", "--path"])
        .arg(&doc_path)
        .current_dir(work.path())
        .output()
        .expect("run openapi-python-client");
    assert!(
        work.path()
            .join("doppel_client/api/default/create_database.py")
            .exists(),
        "the generator made no client: {}\n{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    let wasm = work.path().join("prefix-filter.wasm");
    std::fs::write(&wasm, doppel_server::plugins::builtin::PREFIX_FILTER).unwrap();
    let tour = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("client/tour.py");
    let out = Command::new(venv.join("bin/python"))
        .arg(&tour)
        .arg(a.base())
        .arg(b.base())
        .arg(admin_token())
        .arg(&wasm)
        .env("PYTHONPATH", work.path())
        .output()
        .expect("run the tour");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("tour done through the generated client"),
        "the tour failed through the generated client:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the client wrote is on both nodes, as the API itself reads it.
    let on_b = b
        .client()
        .get("/v1/tenants/shop-co/databases/shop/files/orders/records/o-1001");
    assert_eq!(on_b.ok()["data"], json!({"total": 50}), "{on_b}");
}
