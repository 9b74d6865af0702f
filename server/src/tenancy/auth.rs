//! Authentication: the node's signing keys, JWT verification and issuing, and the claims
//! a token carries.
//!
//! Every key is pinned to one algorithm (HS256 or EdDSA). A token names its key with
//! `kid` (optional only when the node has a single key); its header `alg` must be exactly
//! the key's algorithm, so `alg: none` and algorithm confusion (an HS256 token signed with
//! an EdDSA public key as the HMAC secret) are refused before any signature check.
//! `exp` and `nbf` are checked with a small leeway; `iss`, `aud`, `sub`, `tenant` and
//! `role` are required.

use std::collections::HashMap;

use parking_lot::Mutex;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::roles::Role;

/// Verified tokens a keyring remembers at most (see [`Keyring`]).
const VERIFIED_TOKENS: usize = 4096;

/// The tenant claim of the node administrator: may create tenants and act on any tenant.
pub const ANY_TENANT: &str = "*";

/// The `[auth]` section of the node config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Refuse every API call without a valid token (except `/v1/health`).
    pub enabled: bool,
    /// Expected `iss` claim (and the issuer of tokens this node mints).
    pub issuer: String,
    /// Expected `aud` claim.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Verification keys, selected by `kid`. Empty: the node makes one HS256 key.
    pub keys: Vec<KeyConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: true,
            issuer: "doppel".into(),
            audience: "doppel".into(),
            leeway_secs: 30,
            keys: Vec::new(),
        }
    }
}

/// One key: `{kid, alg = "HS256", secret = "base64"}` or
/// `{kid, alg = "EdDSA", public_key_pem, private_key_pem (optional, for issuing)}`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub kid: String,
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
}

/// Never prints key material.
impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyConfig {{ kid: {:?}, alg: {:?} }}",
            self.kid, self.alg
        )
    }
}

impl KeyConfig {
    /// A fresh random HS256 key (32 bytes from the OS).
    pub fn generate_hs256(kid: &str) -> Result<KeyConfig, String> {
        use std::io::Read;
        let mut secret = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .map_err(|e| format!("cannot read random bytes: {e}"))?;
        Ok(KeyConfig {
            kid: kid.into(),
            alg: "HS256".into(),
            secret: Some(STANDARD.encode(secret)),
            public_key_pem: None,
            private_key_pem: None,
        })
    }
}

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Who: a user or service name. Recorded in the audit log.
    pub sub: String,
    /// The tenant the token acts for, or [`ANY_TENANT`].
    pub tenant: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
}

impl Claims {
    /// Whether these claims may act on `tenant`.
    pub fn covers(&self, tenant: &str) -> bool {
        self.tenant == ANY_TENANT || self.tenant == tenant
    }
}

/// Why a token was refused. Each has its own problem code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Invalid(String),
    BadSignature,
    AlgorithmNotAllowed(String),
    UnknownKey(String),
    Expired,
    NotYetValid,
    WrongAudience,
    WrongIssuer,
}

impl AuthError {
    /// The problem code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing-token",
            AuthError::Invalid(_) => "invalid-token",
            AuthError::BadSignature => "bad-signature",
            AuthError::AlgorithmNotAllowed(_) => "algorithm-not-allowed",
            AuthError::UnknownKey(_) => "unknown-key",
            AuthError::Expired => "token-expired",
            AuthError::NotYetValid => "token-not-yet-valid",
            AuthError::WrongAudience => "wrong-audience",
            AuthError::WrongIssuer => "wrong-issuer",
        }
    }

    /// A detail for the client. Never contains the token.
    pub fn detail(&self) -> String {
        match self {
            AuthError::Missing => {
                "this route needs an 'authorization: Bearer <token>' header".into()
            }
            AuthError::Invalid(why) => format!("the token is not valid: {why}"),
            AuthError::BadSignature => "the token's signature does not verify".into(),
            AuthError::AlgorithmNotAllowed(alg) => {
                format!("algorithm '{alg}' is not the algorithm of the token's key")
            }
            AuthError::UnknownKey(kid) => format!("no key '{kid}' on this node"),
            AuthError::Expired => "the token has expired".into(),
            AuthError::NotYetValid => "the token is not valid yet (nbf)".into(),
            AuthError::WrongAudience => "the token is for another audience (aud)".into(),
            AuthError::WrongIssuer => "the token is from another issuer (iss)".into(),
        }
    }
}

struct Key {
    alg: Algorithm,
    alg_name: &'static str,
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
}

/// The node's keys. `Debug` names the keys, never their material.
pub struct Keyring {
    keys: HashMap<String, Key>,
    /// Tokens verified lately, by their exact text, with their claims. A client sends
    /// the same token with every request; checking its signature (an HMAC, or an
    /// Ed25519 verification) and decoding its JSON again each time was 7% of a small
    /// write's CPU. Only a token that passed every check is kept, and its time claims
    /// are checked again at every use. Emptied when it reaches [`VERIFIED_TOKENS`].
    verified: Mutex<HashMap<String, Claims>>,
    leeway_secs: u64,
    /// The key used to issue tokens: the first key that can sign.
    signing: Option<String>,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&String> = self.keys.keys().collect();
        write!(f, "Keyring {{ kids: {kids:?} }}")
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

pub fn now_secs() -> u64 {
    crate::txn::clock::wall_ms() / 1000
}

impl Keyring {
    /// Builds the keyring from the `[auth]` config. Errors name the bad key.
    pub fn new(config: &AuthConfig) -> Result<Keyring, String> {
        let mut keys = HashMap::new();
        let mut signing = None;
        for kc in &config.keys {
            let bad = |what: &str| format!("auth key '{}': {what}", kc.kid);
            let (alg, alg_name, decoding, encoding) = match kc.alg.as_str() {
                "HS256" => {
                    let secret = kc.secret.as_deref().ok_or_else(|| bad("needs a secret"))?;
                    let bytes = STANDARD
                        .decode(secret.trim())
                        .map_err(|e| bad(&format!("secret is not base64: {e}")))?;
                    if bytes.len() < 32 {
                        return Err(bad("an HS256 secret needs at least 32 bytes"));
                    }
                    (
                        Algorithm::HS256,
                        "HS256",
                        DecodingKey::from_secret(&bytes),
                        Some(EncodingKey::from_secret(&bytes)),
                    )
                }
                "EdDSA" => {
                    let public = kc
                        .public_key_pem
                        .as_deref()
                        .ok_or_else(|| bad("needs public_key_pem"))?;
                    let decoding = DecodingKey::from_ed_pem(public.as_bytes())
                        .map_err(|e| bad(&format!("bad public_key_pem: {e}")))?;
                    let encoding = match &kc.private_key_pem {
                        Some(pem) => Some(
                            EncodingKey::from_ed_pem(pem.as_bytes())
                                .map_err(|e| bad(&format!("bad private_key_pem: {e}")))?,
                        ),
                        None => None,
                    };
                    (Algorithm::EdDSA, "EdDSA", decoding, encoding)
                }
                other => return Err(bad(&format!("alg '{other}' is not HS256 or EdDSA"))),
            };
            let mut validation = Validation::new(alg);
            validation.leeway = config.leeway_secs;
            validation.validate_nbf = true;
            validation.set_issuer(&[&config.issuer]);
            validation.set_audience(&[&config.audience]);
            validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
            if encoding.is_some() && signing.is_none() {
                signing = Some(kc.kid.clone());
            }
            let key = Key {
                alg,
                alg_name,
                decoding,
                encoding,
                validation,
            };
            if keys.insert(kc.kid.clone(), key).is_some() {
                return Err(bad("kid appears twice"));
            }
        }
        if keys.is_empty() {
            return Err("auth is enabled but no key is configured".into());
        }
        Ok(Keyring {
            keys,
            verified: Mutex::new(HashMap::new()),
            leeway_secs: config.leeway_secs,
            signing,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        })
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_at(token, now_secs())
    }

    /// [`Self::verify`] at time `now` (seconds) for a token verified before; a new
    /// token's time claims are checked at the real time.
    fn verify_at(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        if let Some(claims) = self.verified.lock().get(token) {
            // The same checks, with the same leeway, as the first verification made.
            if claims.exp.saturating_add(self.leeway_secs) < now {
                return Err(AuthError::Expired);
            }
            if claims.nbf > now.saturating_add(self.leeway_secs) {
                return Err(AuthError::NotYetValid);
            }
            return Ok(claims.clone());
        }
        let claims = self.verify_signed(token)?;
        let mut verified = self.verified.lock();
        if verified.len() >= VERIFIED_TOKENS {
            verified.clear();
        }
        verified.insert(token.to_string(), claims.clone());
        Ok(claims)
    }

    /// The full check of a token: its form, key, algorithm, signature and claims.
    fn verify_signed(&self, token: &str) -> Result<Claims, AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Invalid(
                "a JWT has three dot-separated parts".into(),
            ));
        };
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| AuthError::Invalid("the header is not base64url".into()))?;
        let header: RawHeader = serde_json::from_slice(&header)
            .map_err(|_| AuthError::Invalid("the header is not a JSON object".into()))?;
        let alg = header
            .alg
            .ok_or_else(|| AuthError::Invalid("the header has no alg".into()))?;
        let key = match &header.kid {
            Some(kid) => self
                .keys
                .get(kid)
                .ok_or_else(|| AuthError::UnknownKey(kid.clone()))?,
            None if self.keys.len() == 1 => self.keys.values().next().expect("one key"),
            None => {
                return Err(AuthError::UnknownKey(
                    "(none: the header has no kid)".into(),
                ))
            }
        };
        if alg != key.alg_name {
            return Err(AuthError::AlgorithmNotAllowed(alg));
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.decoding, &key.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidSignature => AuthError::BadSignature,
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidAudience => AuthError::WrongAudience,
                    ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                    ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed(alg.clone()),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        AuthError::Invalid(format!("the claim '{claim}' is missing"))
                    }
                    ErrorKind::Json(_) => AuthError::Invalid(
                        "the claims need sub, tenant, role (admin, operator, writer or reader), \
                     iss, aud, exp, nbf and iat"
                            .into(),
                    ),
                    _ => AuthError::Invalid("the token cannot be decoded".into()),
                }
            })?;
        Ok(data.claims)
    }

    /// Mints a token with this node's signing key.
    pub fn issue(
        &self,
        sub: &str,
        tenant: &str,
        role: Role,
        ttl_secs: u64,
    ) -> Result<String, String> {
        let kid = self
            .signing
            .as_ref()
            .ok_or("no configured key can sign (an EdDSA key needs private_key_pem)")?;
        let now = now_secs();
        let claims = Claims {
            sub: sub.into(),
            tenant: tenant.into(),
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: now.saturating_add(ttl_secs),
            nbf: now,
            iat: now,
        };
        self.sign(kid, &claims)
    }

    /// Signs arbitrary claims with key `kid` (tests and tools use it to build tokens).
    pub fn sign(&self, kid: &str, claims: &Claims) -> Result<String, String> {
        let key = self
            .keys
            .get(kid)
            .ok_or_else(|| format!("no key '{kid}'"))?;
        let encoding = key
            .encoding
            .as_ref()
            .ok_or_else(|| format!("key '{kid}' cannot sign"))?;
        let mut header = Header::new(key.alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, encoding).map_err(|e| e.to_string())
    }

    /// The expected issuer and audience.
    pub fn issuer_audience(&self) -> (&str, &str) {
        (&self.issuer, &self.audience)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        let mut config = AuthConfig::default();
        config.keys.push(KeyConfig::generate_hs256("k1").unwrap());
        Keyring::new(&config).unwrap()
    }

    #[test]
    fn issued_tokens_verify_and_tampering_is_caught() {
        let ring = ring();
        let token = ring.issue("ann", "acme", Role::Writer, 60).unwrap();
        let claims = ring.verify(&token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.tenant.as_str()),
            ("ann", "acme")
        );
        assert_eq!(claims.role, Role::Writer);
        let mut bad = token.clone();
        bad.pop();
        bad.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(matches!(
            ring.verify(&bad),
            Err(AuthError::BadSignature | AuthError::Invalid(_))
        ));
        assert_eq!(ring.verify("a.b").unwrap_err().code(), "invalid-token");
    }

    #[test]
    fn short_or_unknown_keys_are_refused_at_start() {
        let mut config = AuthConfig::default();
        let mut key = KeyConfig::generate_hs256("k").unwrap();
        key.secret = Some(STANDARD.encode([1u8; 8]));
        config.keys.push(key);
        assert!(Keyring::new(&config).unwrap_err().contains("32 bytes"));
        config.keys[0].alg = "RS256".into();
        assert!(Keyring::new(&config).unwrap_err().contains("RS256"));
    }

    #[test]
    fn a_remembered_token_still_expires_and_a_tampered_one_is_never_taken_for_it() {
        let ring = ring();
        let token = ring.issue("ann", "acme", Role::Writer, 60).unwrap();
        let now = now_secs();
        let first = ring.verify_at(&token, now).unwrap();
        assert_eq!(
            ring.verified.lock().len(),
            1,
            "a verified token is remembered"
        );
        assert_eq!(ring.verify_at(&token, now + 30).unwrap().sub, first.sub);
        // Past exp and the leeway (30 s by default), the remembered token is refused.
        let later = first.exp + 31;
        assert_eq!(
            ring.verify_at(&token, later).unwrap_err().code(),
            "token-expired"
        );
        let early = first.nbf.saturating_sub(31);
        assert_eq!(
            ring.verify_at(&token, early).unwrap_err(),
            AuthError::NotYetValid
        );
        // The same token with another signature is checked in full, and refused.
        let mut bad = token.clone();
        bad.pop();
        bad.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(ring.verify(&bad).is_err());
        assert_eq!(
            ring.verified.lock().len(),
            1,
            "a refused token is not remembered"
        );
    }
}
