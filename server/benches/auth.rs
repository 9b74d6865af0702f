//! Auth overhead per request: verifying an HS256 and an EdDSA token with the node's
//! keyring (header parse, key lookup by kid, signature, claims), and the role check.
//! Target: under 5 µs for HS256. `cargo bench -p doppel-server --bench auth`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use doppel_server::tenancy::auth::{AuthConfig, KeyConfig, Keyring};
use doppel_server::tenancy::roles::{check, Permission, Role};

const ED_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIB0f25soElzxs7LxgatwHt//EITWHF//WBb+3SWlTHWu\n-----END PRIVATE KEY-----\n";
const ED_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAEMdOulg6NWBQBJ0fa2GnxtCVGcDWJcfmEeRZlO2bQ0U=\n-----END PUBLIC KEY-----\n";

fn keyring() -> Keyring {
    let mut config = AuthConfig::default();
    config
        .keys
        .push(KeyConfig::generate_hs256("hs").expect("key"));
    config.keys.push(KeyConfig {
        kid: "ed".into(),
        alg: "EdDSA".into(),
        secret: None,
        public_key_pem: Some(ED_PUBLIC_PEM.into()),
        private_key_pem: Some(ED_PRIVATE_PEM.into()),
    });
    Keyring::new(&config).expect("keyring")
}

fn bench(c: &mut Criterion) {
    let ring = keyring();
    let hs = ring
        .issue("bench", "acme", Role::Writer, 3600)
        .expect("hs token");
    let claims = ring.verify(&hs).expect("valid");
    let ed = ring.sign("ed", &claims).expect("ed token");
    c.bench_function("verify HS256 token", |b| {
        b.iter(|| ring.verify(black_box(&hs)).expect("valid"))
    });
    c.bench_function("verify EdDSA token", |b| {
        b.iter(|| ring.verify(black_box(&ed)).expect("valid"))
    });
    c.bench_function("role check", |b| {
        b.iter(|| check(black_box(&claims), Permission::Write, Some("acme")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
