//! JSON Web Tokens as Docker's token spec uses them: compact JWS signed with ES256 (P-256) or
//! RS256, the key id in `kid` written as distribution's libtrust fingerprint. Signing keys are
//! PEM PKCS#8 files (or PKCS#1 for RSA); trusted keys come from PEM certificates or a JWKS file.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

/// A key or token that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// A key file could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A key file holds no key this registry can use.
    #[error("{path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A token is not a valid, current token for this registry.
    #[error("{0}")]
    Token(String),
}

fn token_err(m: impl Into<String>) -> JwtError {
    JwtError::Token(m.into())
}

enum SignKey {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// The key tokens are signed with.
pub struct Signer {
    key: SignKey,
    kid: String,
    rng: SystemRandom,
}

impl Signer {
    /// Reads `path`, or when it does not exist and `generate` is set, makes a P-256 key and
    /// writes it there (mode 0600).
    pub fn load_or_generate(path: &Path, generate: bool) -> Result<Signer, JwtError> {
        let rng = SystemRandom::new();
        let shown = path.display().to_string();
        if generate && !path.exists() {
            let doc =
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| JwtError::Key {
                        path: shown.clone(),
                        message: "generating a P-256 key failed".into(),
                    })?;
            write_private(path, &pem("PRIVATE KEY", doc.as_ref())).map_err(|source| {
                JwtError::Io {
                    what: "writing the token signing key",
                    path: shown.clone(),
                    source,
                }
            })?;
            tracing::info!(path = %shown, "generated the token signing key (ES256)");
        }
        let bad = |message: &str| JwtError::Key {
            path: shown.clone(),
            message: message.into(),
        };
        let key = PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
            rustls::pki_types::pem::Error::Io(source) => JwtError::Io {
                what: "reading the token signing key",
                path: shown.clone(),
                source,
            },
            other => bad(&format!("no PEM private key ({other})")),
        })?;
        let key = match key {
            PrivateKeyDer::Pkcs8(der) => {
                let der = der.secret_pkcs8_der();
                match EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &rng,
                ) {
                    Ok(k) => SignKey::Ec(k),
                    Err(_) => SignKey::Rsa(RsaKeyPair::from_pkcs8(der).map_err(|e| {
                        bad(&format!(
                            "neither a P-256 nor an RSA (2048 bits or more) key: {e}"
                        ))
                    })?),
                }
            }
            PrivateKeyDer::Pkcs1(der) => SignKey::Rsa(
                RsaKeyPair::from_der(der.secret_pkcs1_der())
                    .map_err(|e| bad(&format!("not a usable RSA key: {e}")))?,
            ),
            _ => {
                return Err(bad(
                    "an EC key must be PKCS#8: convert it with openssl pkcs8 -topk8 -nocrypt",
                ));
            }
        };
        let spki = match &key {
            SignKey::Ec(k) => ec_spki(k.public_key().as_ref()),
            SignKey::Rsa(k) => rsa_spki(k.public().as_ref()),
        };
        Ok(Signer {
            kid: libtrust_kid(&spki),
            key,
            rng,
        })
    }

    /// `ES256` or `RS256`.
    pub fn alg(&self) -> &'static str {
        match self.key {
            SignKey::Ec(_) => "ES256",
            SignKey::Rsa(_) => "RS256",
        }
    }

    /// The key's id, as distribution's libtrust writes it.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A compact JWS of `claims`.
    pub fn sign(&self, claims: &Value) -> Result<String, JwtError> {
        let header = json!({"typ": "JWT", "alg": self.alg(), "kid": self.kid});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = match &self.key {
            SignKey::Ec(k) => k
                .sign(&self.rng, input.as_bytes())
                .map_err(|_| token_err("signing failed"))?
                .as_ref()
                .to_vec(),
            SignKey::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| token_err("signing failed"))?;
                sig
            }
        };
        Ok(format!("{input}.{}", B64.encode(sig)))
    }

    /// The public half, to verify this registry's own tokens.
    pub fn verifier(&self) -> Verifier {
        let key = match &self.key {
            SignKey::Ec(k) => PublicKey::Ec(k.public_key().as_ref().to_vec()),
            SignKey::Rsa(k) => PublicKey::RsaDer(k.public().as_ref().to_vec()),
        };
        Verifier {
            keys: vec![TrustedKey {
                kid: Some(self.kid.clone()),
                key,
            }],
        }
    }
}

enum PublicKey {
    /// An uncompressed P-256 point.
    Ec(Vec<u8>),
    /// A DER RSAPublicKey.
    RsaDer(Vec<u8>),
    /// Modulus and exponent, big-endian.
    RsaParts { n: Vec<u8>, e: Vec<u8> },
    /// A certificate whose key signs.
    Cert(CertificateDer<'static>),
}

struct TrustedKey {
    kid: Option<String>,
    key: PublicKey,
}

impl TrustedKey {
    fn verify(&self, alg: &str, msg: &[u8], sig: &[u8]) -> bool {
        match (&self.key, alg) {
            (PublicKey::Ec(point), "ES256") => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            (PublicKey::RsaDer(der), "RS256") => {
                signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, der)
                    .verify(msg, sig)
                    .is_ok()
            }
            (PublicKey::RsaParts { n, e }, "RS256") => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig)
                .is_ok(),
            (PublicKey::Cert(der), _) => {
                let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
                    return false;
                };
                match alg {
                    "ES256" => ecdsa_der(sig).is_some_and(|d| {
                        cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, msg, &d)
                            .is_ok()
                    }),
                    "RS256" => cert
                        .verify_signature(webpki::ring::RSA_PKCS1_2048_8192_SHA256, msg, sig)
                        .is_ok(),
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

/// The keys whose signatures are trusted.
pub struct Verifier {
    keys: Vec<TrustedKey>,
}

impl Verifier {
    /// The certificates in a PEM file and the keys in a JWKS file.
    pub fn external(certs: Option<&Path>, jwks: Option<&Path>) -> Result<Verifier, JwtError> {
        let mut keys = Vec::new();
        if let Some(path) = certs {
            let shown = path.display().to_string();
            let list: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect)
                .map_err(|e| JwtError::Key {
                    path: shown.clone(),
                    message: format!("reading certificates: {e}"),
                })?;
            if list.is_empty() {
                return Err(JwtError::Key {
                    path: shown,
                    message: "holds no certificate".into(),
                });
            }
            keys.extend(list.into_iter().map(|c| TrustedKey {
                kid: None,
                key: PublicKey::Cert(c),
            }));
        }
        if let Some(path) = jwks {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| JwtError::Io {
                what: "reading the JWKS file",
                path: shown.clone(),
                source,
            })?;
            keys.extend(parse_jwks(&text).map_err(|message| JwtError::Key {
                path: shown.clone(),
                message,
            })?);
        }
        Ok(Verifier { keys })
    }

    /// The claims of `token` if one of the trusted keys signed it and it is current for
    /// `issuer` and `audience` at `now` (seconds since the epoch; a minute's leeway).
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: i64,
    ) -> Result<Value, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(token_err("not a compact JWT"));
        };
        let header: Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| token_err("the token's header is not base64url JSON"))?;
        let alg = header["alg"].as_str().unwrap_or_default();
        if alg != "ES256" && alg != "RS256" {
            return Err(token_err(format!(
                "the token is signed with {alg:?}; ES256 or RS256 are accepted"
            )));
        }
        let sig = B64
            .decode(s)
            .map_err(|_| token_err("the token's signature is not base64url"))?;
        let kid = header["kid"].as_str();
        let msg = &token.as_bytes()[..h.len() + 1 + c.len()];
        let signed = self
            .keys
            .iter()
            .filter(|k| match (&k.kid, kid) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            })
            .any(|k| k.verify(alg, msg, &sig));
        if !signed {
            return Err(token_err("the token is not signed by a trusted key"));
        }
        let claims: Value = B64
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| token_err("the token's claims are not base64url JSON"))?;
        const LEEWAY: i64 = 60;
        if claims["iss"].as_str() != Some(issuer) {
            return Err(token_err(format!("the token is not issued by {issuer:?}")));
        }
        let aud_ok = match &claims["aud"] {
            Value::String(a) => a == audience,
            Value::Array(list) => list.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !aud_ok {
            return Err(token_err(format!("the token is not for {audience:?}")));
        }
        match claims["exp"].as_i64() {
            Some(exp) if exp + LEEWAY > now => {}
            Some(_) => return Err(token_err("the token has expired")),
            None => return Err(token_err("the token has no expiry")),
        }
        if claims["nbf"].as_i64().is_some_and(|nbf| nbf - LEEWAY > now) {
            return Err(token_err("the token is not valid yet"));
        }
        Ok(claims)
    }
}

fn parse_jwks(text: &str) -> Result<Vec<TrustedKey>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc["keys"]
        .as_array()
        .ok_or("no \"keys\" array (a JWKS file is {\"keys\": [...]})")?;
    let field = |k: &Value, name: &str| -> Result<Vec<u8>, String> {
        let text = k[name]
            .as_str()
            .ok_or_else(|| format!("a key without {name:?}"))?;
        B64.decode(text.trim_end_matches('='))
            .map_err(|_| format!("{name:?} is not base64url"))
    };
    let mut keys = Vec::new();
    for k in list {
        let kid = k["kid"].as_str().map(str::to_owned);
        let key = match (k["kty"].as_str(), k["crv"].as_str()) {
            (Some("EC"), Some("P-256")) => {
                let mut point = vec![4];
                point.extend(field(k, "x")?);
                point.extend(field(k, "y")?);
                PublicKey::Ec(point)
            }
            (Some("RSA"), _) => PublicKey::RsaParts {
                n: field(k, "n")?,
                e: field(k, "e")?,
            },
            (kty, crv) => {
                tracing::warn!(
                    ?kty,
                    ?crv,
                    "skipping a JWKS key of a kind wharf cannot verify"
                );
                continue;
            }
        };
        keys.push(TrustedKey { kid, key });
    }
    if keys.is_empty() {
        return Err("holds no P-256 or RSA key".into());
    }
    Ok(keys)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn der_len(n: usize) -> Vec<u8> {
    match n {
        0..0x80 => vec![n as u8],
        0x80..0x100 => vec![0x81, n as u8],
        _ => vec![0x82, (n >> 8) as u8, n as u8],
    }
}

fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(body.len()));
    out.extend_from_slice(body);
    out
}

/// SubjectPublicKeyInfo of a P-256 point.
fn ec_spki(point: &[u8]) -> Vec<u8> {
    // id-ecPublicKey, prime256v1
    let alg = der(
        0x30,
        &[
            &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01][..],
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        ]
        .concat(),
    );
    let bits = der(0x03, &[&[0u8][..], point].concat());
    der(0x30, &[alg, bits].concat())
}

/// SubjectPublicKeyInfo of a DER RSAPublicKey.
fn rsa_spki(public: &[u8]) -> Vec<u8> {
    // rsaEncryption, NULL
    let alg = der(
        0x30,
        &[
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
        ],
    );
    let bits = der(0x03, &[&[0u8][..], public].concat());
    der(0x30, &[alg, bits].concat())
}

/// distribution's key id: the SHA-256 of the SubjectPublicKeyInfo cut to 240 bits, in
/// base32, in twelve groups of four joined by colons.
fn libtrust_kid(spki: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = ring::digest::digest(&ring::digest::SHA256, spki);
    let bytes = &hash.as_ref()[..30];
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = String::new();
    for &b in bytes {
        bits = (bits << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            out.push(char::from(ALPHABET[((bits >> nbits) & 31) as usize]));
        }
    }
    out.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(":")
}

/// A JWS ES256 signature (r ‖ s) as the DER `ECDSA-Sig-Value` certificates' verifiers take.
fn ecdsa_der(sig: &[u8]) -> Option<Vec<u8>> {
    if sig.len() != 64 {
        return None;
    }
    let int = |x: &[u8]| {
        let x = &x[x.iter().position(|&b| b != 0).unwrap_or(x.len() - 1)..];
        let mut body = Vec::new();
        if x[0] & 0x80 != 0 {
            body.push(0);
        }
        body.extend_from_slice(x);
        der(0x02, &body)
    };
    Some(der(0x30, &[int(&sig[..32]), int(&sig[32..])].concat()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Value {
        json!({"iss": "wharf", "aud": "svc", "sub": "alice", "exp": exp, "nbf": 0})
    }

    #[test]
    fn own_tokens_round_trip_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth/key.pem");
        let signer = Signer::load_or_generate(&path, true).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(signer.alg(), "ES256");
        assert_eq!(signer.kid().len(), 59, "{}", signer.kid());
        // The same key comes back on the next start.
        let again = Signer::load_or_generate(&path, true).unwrap();
        assert_eq!(again.kid(), signer.kid());
        let v = signer.verifier();
        let t = signer.sign(&claims(2_000)).unwrap();
        assert_eq!(v.verify(&t, "wharf", "svc", 1_000).unwrap()["sub"], "alice");
        let e = |r: Result<Value, JwtError>| r.unwrap_err().to_string();
        assert!(e(v.verify(&t, "wharf", "svc", 3_000)).contains("expired"));
        assert!(e(v.verify(&t, "other", "svc", 1_000)).contains("issued"));
        assert!(e(v.verify(&t, "wharf", "nope", 1_000)).contains("not for"));
        // A changed claim breaks the signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = B64.encode(claims(9_999_999).to_string());
        parts[1] = &forged;
        assert!(e(v.verify(&parts.join("."), "wharf", "svc", 1_000)).contains("signed"));
        // Another key's token is not trusted.
        let other = Signer::load_or_generate(&dir.path().join("other.pem"), true).unwrap();
        let t2 = other.sign(&claims(2_000)).unwrap();
        assert!(e(v.verify(&t2, "wharf", "svc", 1_000)).contains("signed"));
        // "none" is never accepted.
        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none"}"#),
            B64.encode(claims(2_000).to_string())
        );
        assert!(e(v.verify(&none, "wharf", "svc", 1_000)).contains("none"));
    }

    #[test]
    fn jwks_keys_verify() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_generate(&dir.path().join("k.pem"), true).unwrap();
        let SignKey::Ec(k) = &signer.key else {
            panic!("ES256 expected")
        };
        let point = k.public_key().as_ref();
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": signer.kid(),
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..]),
        }]});
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, jwks.to_string()).unwrap();
        let v = Verifier::external(None, Some(&file)).unwrap();
        let t = signer.sign(&claims(2_000)).unwrap();
        assert!(v.verify(&t, "wharf", "svc", 1_000).is_ok());
        std::fs::write(&file, r#"{"keys": []}"#).unwrap();
        let e = Verifier::external(None, Some(&file))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("jwks.json"), "{e}");
    }

    #[test]
    fn signatures_convert_to_der() {
        let mut sig = [0u8; 64];
        sig[0] = 0x80;
        sig[63] = 1;
        let d = ecdsa_der(&sig).unwrap();
        // r needs a zero byte in front (high bit set); s shrinks to one byte.
        assert_eq!(&d[..4], &[0x30, 38, 0x02, 33]);
        assert_eq!(&d[d.len() - 3..], &[0x02, 1, 1]);
    }
}
