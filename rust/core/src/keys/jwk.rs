//! JWK parsing, generation and export (RFC 7517, 7518, 8037, 7638).

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use ring::{agreement, digest};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::{b64d, b64e, ALG_A256GCMKW, ALG_EDDSA, ALG_ES256, ALG_HPKE, P256_POINT_LEN};
use crate::crypto::SecretBytes;
use crate::error::{Error, Result};

/// What a key is for, from its `kty` and `crv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Symmetric 256-bit key-encryption key.
    Oct,
    /// X25519 key agreement key.
    X25519,
    /// Ed25519 signing key.
    Ed25519,
    /// ECDSA P-256 signing key (`kty: "EC", crv: "P-256"`, JWS `ES256`).
    P256,
}

impl KeyKind {
    /// Parses the names accepted by `generate_key`.
    pub fn parse(s: &str) -> Result<KeyKind> {
        match s.to_ascii_lowercase().as_str() {
            "oct" => Ok(KeyKind::Oct),
            "x25519" => Ok(KeyKind::X25519),
            "ed25519" => Ok(KeyKind::Ed25519),
            "p-256" | "p256" | "es256" | "ec" => Ok(KeyKind::P256),
            _ => Err(Error::InvalidArgument(format!(
                "unknown key kind {s:?}: expected \"oct\", \"X25519\", \"Ed25519\" or \"P-256\""
            ))),
        }
    }

    /// The JOSE algorithm of the key's type: the only one it is used with.
    pub fn alg(self) -> &'static str {
        match self {
            KeyKind::Oct => ALG_A256GCMKW,
            KeyKind::X25519 => ALG_HPKE,
            KeyKind::Ed25519 => ALG_EDDSA,
            KeyKind::P256 => ALG_ES256,
        }
    }

    /// Whether keys of this kind sign (rather than wrap data keys).
    pub fn signs(self) -> bool {
        matches!(self, KeyKind::Ed25519 | KeyKind::P256)
    }
}

/// A parsed JWK. Secret members are wiped on drop and never printed.
#[derive(Clone)]
pub struct Jwk {
    pub(super) kind: KeyKind,
    /// The secret: `k` for oct, `d` for OKP and EC keys.
    pub(super) secret: Option<SecretBytes>,
    /// The public `x` of OKP and EC keys.
    pub(super) public: [u8; 32],
    /// The public `y` of EC keys (zero for the others).
    pub(super) public_y: [u8; 32],
    pub(super) kid: String,
    pub(super) thumbprint: String,
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Jwk({:?}, kid={:?}, {})",
            self.kind,
            self.kid,
            if self.secret.is_some() {
                "private"
            } else {
                "public"
            }
        )
    }
}

#[derive(Deserialize, Serialize, Default)]
struct RawJwk {
    kty: Option<String>,
    crv: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    k: Option<String>,
    d: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl Drop for RawJwk {
    fn drop(&mut self) {
        self.k.zeroize();
        self.d.zeroize();
    }
}

/// The private member `d` of an OKP or EC key, if present: 32 bytes.
fn private_member(d: Option<&str>) -> Result<Option<SecretBytes>> {
    d.map(|d| {
        let bytes = Zeroizing::new(b64d("d", d)?);
        SecretBytes::from_slice(&bytes)
            .ok_or_else(|| Error::InvalidKey("\"d\" must be 32 bytes".into()))
    })
    .transpose()
}

impl Jwk {
    /// Parses one JWK from JSON text.
    pub fn parse(json: &str) -> Result<Jwk> {
        let raw: RawJwk = serde_json::from_str(json).map_err(|e| {
            Error::InvalidKey(format!("not a JWK object ({:?} error)", e.classify()))
        })?;
        Jwk::from_raw(&raw)
    }

    /// Parses a JWK, a JSON list of JWKs, or a JWKS (`{"keys": [...]}`).
    pub fn parse_set(json: &str) -> Result<Vec<Jwk>> {
        let v: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| Error::InvalidKey(format!("not JSON ({:?} error)", e.classify())))?;
        let items = match v {
            serde_json::Value::Array(items) => items,
            serde_json::Value::Object(mut o) if o.contains_key("keys") => match o.remove("keys") {
                Some(serde_json::Value::Array(items)) => items,
                _ => {
                    return Err(Error::InvalidKey(
                        "JWKS member \"keys\" must be a list".into(),
                    ))
                }
            },
            v @ serde_json::Value::Object(_) => vec![v],
            _ => {
                return Err(Error::InvalidKey(
                    "expected a JWK, a list of JWKs or a JWKS".into(),
                ))
            }
        };
        items
            .into_iter()
            .map(|item| {
                let raw: RawJwk = serde_json::from_value(item)
                    .map_err(|_| Error::InvalidKey("a key is not a JWK object".into()))?;
                Jwk::from_raw(&raw)
            })
            .collect()
    }

    fn from_raw(raw: &RawJwk) -> Result<Jwk> {
        let kty = raw
            .kty
            .as_deref()
            .ok_or_else(|| Error::InvalidKey("missing \"kty\"".into()))?;
        let mut public_y = [0u8; 32];
        let (kind, secret, public) = match kty {
            "oct" => {
                let k = raw.k.as_deref().ok_or_else(|| {
                    Error::InvalidKey("symmetric (oct) key has no \"k\" member".into())
                })?;
                let bytes = Zeroizing::new(b64d("k", k)?);
                let secret = SecretBytes::from_slice(&bytes).ok_or_else(|| {
                    Error::InvalidKey(format!(
                        "oct key must be 256 bits, got {} bits",
                        bytes.len() * 8
                    ))
                })?;
                (KeyKind::Oct, Some(secret), [0u8; 32])
            }
            "OKP" => {
                let kind = match raw.crv.as_deref() {
                    Some("X25519") => KeyKind::X25519,
                    Some("Ed25519") => KeyKind::Ed25519,
                    Some(c) => {
                        return Err(Error::InvalidKey(format!("unsupported OKP curve {c:?}")))
                    }
                    None => return Err(Error::InvalidKey("OKP key has no \"crv\"".into())),
                };
                let x = raw
                    .x
                    .as_deref()
                    .ok_or_else(|| Error::InvalidKey("OKP key has no \"x\"".into()))?;
                let public: [u8; 32] = b64d("x", x)?
                    .try_into()
                    .map_err(|_| Error::InvalidKey("\"x\" must be 32 bytes".into()))?;
                let secret = private_member(raw.d.as_deref())?;
                if secret
                    .as_ref()
                    .is_some_and(|s| derive_public(kind, s) != public)
                {
                    return Err(Error::InvalidKey("\"x\" does not match \"d\"".into()));
                }
                (kind, secret, public)
            }
            "EC" => {
                match raw.crv.as_deref() {
                    Some("P-256") => {}
                    Some(c) => {
                        return Err(Error::InvalidKey(format!("unsupported EC curve {c:?}")))
                    }
                    None => return Err(Error::InvalidKey("EC key has no \"crv\"".into())),
                }
                let coordinate = |name: &str, v: &Option<String>| -> Result<[u8; 32]> {
                    let v = v
                        .as_deref()
                        .ok_or_else(|| Error::InvalidKey(format!("EC key has no {name:?}")))?;
                    b64d(name, v)?
                        .try_into()
                        .map_err(|_| Error::InvalidKey(format!("{name:?} must be 32 bytes")))
                };
                let x = coordinate("x", &raw.x)?;
                public_y = coordinate("y", &raw.y)?;
                let point = p256_point(&x, &public_y);
                p256_check_point(&point)?;
                let secret = private_member(raw.d.as_deref())?;
                if let Some(s) = &secret {
                    p256_key_pair(s, &point)?;
                }
                (KeyKind::P256, secret, x)
            }
            other => return Err(Error::InvalidKey(format!("unsupported kty {other:?}"))),
        };
        if let Some(alg) = raw.alg.as_deref() {
            if alg != kind.alg() {
                return Err(Error::InvalidKey(format!(
                    "key declares alg {alg:?}, but a {kind:?} key is used with {:?}",
                    kind.alg()
                )));
            }
        }
        let mut jwk = Jwk {
            kind,
            secret,
            public,
            public_y,
            kid: String::new(),
            thumbprint: String::new(),
        };
        jwk.thumbprint = jwk.compute_thumbprint();
        jwk.kid = raw.kid.clone().unwrap_or_else(|| jwk.thumbprint.clone());
        Ok(jwk)
    }

    /// A fresh private key of `kind`, with its thumbprint as `kid`.
    pub fn generate(kind: KeyKind) -> Result<Jwk> {
        let (secret, public, public_y) = match kind {
            KeyKind::P256 => p256_generate()?,
            _ => {
                let secret = SecretBytes::random()?;
                let public = match kind {
                    KeyKind::Oct => [0u8; 32],
                    _ => derive_public(kind, &secret),
                };
                (secret, public, [0u8; 32])
            }
        };
        let mut jwk = Jwk {
            kind,
            secret: Some(secret),
            public,
            public_y,
            kid: String::new(),
            thumbprint: String::new(),
        };
        jwk.thumbprint = jwk.compute_thumbprint();
        jwk.kid = jwk.thumbprint.clone();
        Ok(jwk)
    }

    /// RFC 7638 thumbprint: SHA-256 over the required members in
    /// lexicographic order, base64url.
    fn compute_thumbprint(&self) -> String {
        let canonical = Zeroizing::new(match self.kind {
            KeyKind::Oct => format!(
                r#"{{"k":"{}","kty":"oct"}}"#,
                b64e(self.secret.as_ref().expect("oct keys are secret").expose())
            ),
            KeyKind::X25519 | KeyKind::Ed25519 => format!(
                r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
                if self.kind == KeyKind::X25519 {
                    "X25519"
                } else {
                    "Ed25519"
                },
                b64e(&self.public)
            ),
            // RFC 7638 §3.2: crv, kty, x, y.
            KeyKind::P256 => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                b64e(&self.public),
                b64e(&self.public_y)
            ),
        });
        b64e(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// What the key is for.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The key id: the JWK's `kid`, or its thumbprint.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The RFC 7638 thumbprint.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// Whether the key holds its secret part.
    pub fn is_private(&self) -> bool {
        self.secret.is_some()
    }

    /// The public key bytes of an OKP key; the `x` coordinate of an EC key
    /// (see [`Jwk::p256_point`] for the whole point).
    pub fn public_bytes(&self) -> &[u8; 32] {
        &self.public
    }

    /// The uncompressed public point `0x04 || x || y` of a P-256 key.
    pub fn p256_point(&self) -> Option<[u8; P256_POINT_LEN]> {
        (self.kind == KeyKind::P256).then(|| p256_point(&self.public, &self.public_y))
    }

    pub(crate) fn secret(&self) -> Option<&SecretBytes> {
        self.secret.as_ref()
    }

    /// Whether this key answers to a recipient or signer id.
    pub fn matches(&self, kid: &str) -> bool {
        self.kid == kid || self.thumbprint == kid
    }

    /// The JWK as JSON text. With `private`, secret members are included
    /// (callers writing it to disk must protect the file).
    pub fn to_json(&self, private: bool) -> Result<String> {
        if self.kind == KeyKind::Oct && !private {
            return Err(Error::InvalidKey(
                "a symmetric (oct) key has no public part".into(),
            ));
        }
        let mut raw = RawJwk::default();
        raw.kid = Some(self.kid.clone());
        raw.alg = Some(self.kind.alg().into());
        match self.kind {
            KeyKind::Oct => {
                raw.kty = Some("oct".into());
                raw.k = self.secret.as_ref().map(|s| b64e(s.expose()));
            }
            KeyKind::X25519 | KeyKind::Ed25519 => {
                raw.kty = Some("OKP".into());
                raw.crv = Some(
                    if self.kind == KeyKind::X25519 {
                        "X25519"
                    } else {
                        "Ed25519"
                    }
                    .into(),
                );
                raw.x = Some(b64e(&self.public));
                if private {
                    raw.d = self.secret.as_ref().map(|s| b64e(s.expose()));
                }
            }
            KeyKind::P256 => {
                raw.kty = Some("EC".into());
                raw.crv = Some("P-256".into());
                raw.x = Some(b64e(&self.public));
                raw.y = Some(b64e(&self.public_y));
                if private {
                    raw.d = self.secret.as_ref().map(|s| b64e(s.expose()));
                }
            }
        }
        let v = serde_json::to_value(&raw).expect("JWK serializes");
        let obj: serde_json::Map<String, serde_json::Value> = v
            .as_object()
            .expect("object")
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(serde_json::to_string(&obj).expect("JSON"))
    }

    /// The public half of an OKP or EC key.
    pub fn public(&self) -> Result<Jwk> {
        if self.kind == KeyKind::Oct {
            return Err(Error::InvalidKey(
                "a symmetric (oct) key has no public part".into(),
            ));
        }
        let mut p = self.clone();
        p.secret = None;
        Ok(p)
    }
}

fn derive_public(kind: KeyKind, secret: &SecretBytes) -> [u8; 32] {
    match kind {
        KeyKind::X25519 => {
            let s = x25519_dalek::StaticSecret::from(*secret.expose());
            x25519_dalek::PublicKey::from(&s).to_bytes()
        }
        KeyKind::Ed25519 => {
            let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(secret.expose())
                .expect("32-byte seed");
            kp.public_key()
                .as_ref()
                .try_into()
                .expect("32-byte public key")
        }
        KeyKind::Oct | KeyKind::P256 => [0u8; 32],
    }
}

fn p256_point(x: &[u8; 32], y: &[u8; 32]) -> [u8; P256_POINT_LEN] {
    let mut point = [0u8; P256_POINT_LEN];
    point[0] = 0x04;
    point[1..33].copy_from_slice(x);
    point[33..].copy_from_slice(y);
    point
}

/// Fails unless `point` is a valid uncompressed P-256 public key: both
/// coordinates below the field prime and on the curve. ring validates a
/// peer's point in ECDH (and would otherwise only fail at verification time,
/// indistinguishably from a bad signature), so an ECDH with a throwaway
/// ephemeral key is the check.
fn p256_check_point(point: &[u8; P256_POINT_LEN]) -> Result<()> {
    let rng = SystemRandom::new();
    let ephemeral = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
        .map_err(|_| Error::Io(std::io::Error::other("system random source failed")))?;
    agreement::agree_ephemeral(
        ephemeral,
        &agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, point),
        |_| (),
    )
    .map_err(|_| Error::InvalidKey("EC \"x\", \"y\" is not a point on the P-256 curve".into()))
}

/// The ring key pair of a P-256 private key; fails if `d` is out of range or
/// does not match the point.
pub(crate) fn p256_key_pair(d: &SecretBytes, point: &[u8; P256_POINT_LEN]) -> Result<EcdsaKeyPair> {
    EcdsaKeyPair::from_private_key_and_public_key(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        d.expose(),
        point,
        &SystemRandom::new(),
    )
    .map_err(|_| {
        Error::InvalidKey(
            "EC \"d\" is not a valid P-256 private key or does not match \"x\", \"y\"".into(),
        )
    })
}

/// A fresh P-256 key. `d` is drawn from the system CSPRNG by rejection
/// sampling (FIPS 186-5 A.2.2: a candidate that is 0 or not below the group
/// order is drawn again; one in about 2^32 is); the vetted `p256` crate
/// computes the point `d·G`, and ring rebuilds the pair from both, checking
/// that they match, as it does for an imported key. Nothing is read out of
/// an encoding: ring's PKCS#8 document is not used.
fn p256_generate() -> Result<(SecretBytes, [u8; 32], [u8; 32])> {
    // A run of 64 rejections has probability about 2^-2048: only a broken
    // random source gets there, and it is then refused, not used.
    for _ in 0..64 {
        let d = SecretBytes::random()?;
        let Some(point) = p256_public(&d) else {
            continue;
        };
        p256_key_pair(&d, &point)?;
        let x: [u8; 32] = point[1..33].try_into().expect("32 bytes");
        let y: [u8; 32] = point[33..].try_into().expect("32 bytes");
        return Ok((d, x, y));
    }
    Err(Error::Io(std::io::Error::other(
        "system random source failed: no P-256 scalar in range",
    )))
}

/// The uncompressed point `d·G`, or None if `d` is 0 or not below the order.
fn p256_public(d: &SecretBytes) -> Option<[u8; P256_POINT_LEN]> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let secret = p256::SecretKey::from_bytes(d.expose().into()).ok()?;
    secret
        .public_key()
        .to_encoded_point(false)
        .as_bytes()
        .try_into()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DataKey;
    use crate::keys::unhex;
    use crate::keys::wrap;

    #[test]
    fn jwk_parse_rules() {
        assert!(
            matches!(Jwk::parse(r#"{"kty":"oct"}"#), Err(Error::InvalidKey(m)) if m.contains("\"k\""))
        );
        // Standard base64 with padding is not JOSE.
        let std_b64 = "q".repeat(42) + "+/=";
        let e = Jwk::parse(&format!(r#"{{"kty":"oct","k":"{std_b64}"}}"#)).unwrap_err();
        assert!(
            !e.to_string().contains(&std_b64),
            "error text must not echo key bytes"
        );
        assert!(
            Jwk::parse(r#"{"kty":"oct","k":"AAAA"}"#).is_err(),
            "short key"
        );
        let k = Jwk::generate(KeyKind::Oct).unwrap();
        let text = k.to_json(true).unwrap();
        assert_eq!(Jwk::parse(&text).unwrap().kid(), k.kid());
        assert!(!format!("{k:?}").contains(&b64e(k.secret().unwrap().expose())));
    }

    #[test]
    fn okp_public_must_match_private() {
        let a = Jwk::generate(KeyKind::X25519).unwrap();
        let b = Jwk::generate(KeyKind::X25519).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&a.to_json(true).unwrap()).unwrap();
        v["x"] = serde_json::Value::String(b64e(b.public_bytes()));
        assert!(Jwk::parse(&v.to_string()).is_err());
    }

    /// RFC 7515 A.3: the ES256 example key.
    const RFC7515_P256: &str = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"}"#;

    fn with(json: &str, member: &str, value: serde_json::Value) -> String {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v[member] = value;
        v.to_string()
    }

    #[test]
    fn p256_public_point_matches_rfc6979_a25() {
        // RFC 6979 A.2.5: the P-256 key pair of its ECDSA examples.
        let d = SecretBytes::from_slice(&unhex(
            "c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721",
        ))
        .unwrap();
        let point = p256_public(&d).unwrap();
        assert_eq!(point[0], 0x04);
        assert_eq!(
            point[1..33],
            unhex("60fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6")[..]
        );
        assert_eq!(
            point[33..],
            unhex("7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299")[..]
        );
        // 0 and the group order n are not private keys: drawn again.
        assert!(p256_public(&SecretBytes::from_slice(&[0u8; 32]).unwrap()).is_none());
        let n = unhex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
        assert!(p256_public(&SecretBytes::from_slice(&n).unwrap()).is_none());
    }

    #[test]
    fn p256_generate_export_parse() {
        for name in ["P-256", "p256", "ES256", "EC"] {
            assert_eq!(KeyKind::parse(name).unwrap(), KeyKind::P256);
        }
        let k = Jwk::generate(KeyKind::P256).unwrap();
        assert!(k.is_private());
        assert_eq!(k.kind().alg(), ALG_ES256);
        let text = k.to_json(true).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["kty"], "EC");
        assert_eq!(v["crv"], "P-256");
        assert_eq!(v["alg"], "ES256");
        for m in ["x", "y", "d"] {
            assert_eq!(b64d(m, v[m].as_str().unwrap()).unwrap().len(), 32, "{m}");
        }
        let back = Jwk::parse(&text).unwrap();
        assert_eq!(back.kid(), k.kid());
        assert_eq!(back.p256_point(), k.p256_point());
        assert_eq!(
            back.secret().unwrap().expose(),
            k.secret().unwrap().expose()
        );
        let public = k.public().unwrap();
        let pub_text = public.to_json(false).unwrap();
        assert!(!pub_text.contains("\"d\""));
        let p = Jwk::parse(&pub_text).unwrap();
        assert!(!p.is_private());
        assert_eq!(p.thumbprint(), k.thumbprint());
        // The generated d really is the private key of the point.
        let point = k.p256_point().unwrap();
        assert_eq!(point[0], 4);
        assert_eq!(
            p256_key_pair(k.secret().unwrap(), &point)
                .unwrap()
                .public_key()
                .as_ref(),
            point.as_slice()
        );
        let d = v["d"].as_str().unwrap();
        assert!(!format!("{k:?}").contains(d));
        assert!(Jwk::generate(KeyKind::P256).unwrap().kid() != k.kid());
        // An EC key signs; it is no recipient.
        let dk = DataKey::generate().unwrap();
        assert!(matches!(wrap(&dk, &public), Err(Error::InvalidKey(_))));
    }

    #[test]
    fn p256_thumbprint_members() {
        // RFC 7638 §3.2: crv, kty, x, y in that order, nothing else.
        let k = Jwk::parse(RFC7515_P256).unwrap();
        let v: serde_json::Value = serde_json::from_str(RFC7515_P256).unwrap();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            v["x"].as_str().unwrap(),
            v["y"].as_str().unwrap()
        );
        assert_eq!(
            k.thumbprint(),
            b64e(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
        );
        assert_eq!(k.kid(), k.thumbprint());
    }

    #[test]
    fn p256_malformed_keys_refused() {
        let v: serde_json::Value = serde_json::from_str(RFC7515_P256).unwrap();
        let d = v["d"].as_str().unwrap().to_owned();
        let y = b64d("y", v["y"].as_str().unwrap()).unwrap();
        let bad = |json: String, what: &str| {
            let e = Jwk::parse(&json).unwrap_err();
            assert!(matches!(e, Error::InvalidKey(_)), "{what}: {e}");
            assert!(!e.to_string().contains(&d), "{what}: error echoes d");
            e.to_string()
        };
        let string = |s: String| serde_json::Value::String(s);
        let public = with(RFC7515_P256, "d", serde_json::Value::Null).replace(",\"d\":null", "");
        assert!(Jwk::parse(&public).is_ok());
        // A point off the curve: y + 1.
        let mut y1 = y.clone();
        y1[31] ^= 1;
        let e = bad(with(&public, "y", string(b64e(&y1))), "off curve (public)");
        assert!(e.contains("not a point on the P-256 curve"), "{e}");
        bad(
            with(RFC7515_P256, "y", string(b64e(&y1))),
            "off curve (private)",
        );
        // Coordinates at or above the field prime.
        bad(with(&public, "x", string(b64e(&[0xff; 32]))), "x >= p");
        // Lengths.
        bad(with(&public, "x", string(b64e(&[1; 31]))), "31-byte x");
        bad(with(&public, "y", string(b64e(&[1; 33]))), "33-byte y");
        bad(with(RFC7515_P256, "d", string(b64e(&[1; 31]))), "31-byte d");
        bad(with(RFC7515_P256, "d", string(b64e(&[1; 33]))), "33-byte d");
        // d out of range: 0 and the group order n.
        bad(with(RFC7515_P256, "d", string(b64e(&[0; 32]))), "d = 0");
        let n = unhex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
        bad(with(RFC7515_P256, "d", string(b64e(&n))), "d = n");
        // d of another key.
        let other = Jwk::generate(KeyKind::P256).unwrap();
        let e = bad(
            with(
                RFC7515_P256,
                "d",
                string(b64e(other.secret().unwrap().expose())),
            ),
            "d mismatch",
        );
        assert!(e.contains("does not match"), "{e}");
        // Missing members, other curves, a wrong alg.
        bad(with(&public, "y", serde_json::Value::Null), "no y");
        bad(with(&public, "crv", string("P-384".into())), "P-384");
        bad(with(&public, "crv", serde_json::Value::Null), "no crv");
        bad(with(&public, "alg", string("EdDSA".into())), "alg EdDSA");
        assert!(Jwk::parse(&with(&public, "alg", string("ES256".into()))).is_ok());
        // An OKP key claiming ES256 is refused too.
        let ed = Jwk::generate(KeyKind::Ed25519)
            .unwrap()
            .to_json(false)
            .unwrap();
        bad(with(&ed, "alg", string("ES256".into())), "OKP with ES256");
    }

    #[test]
    fn rfc7638_thumbprint_example() {
        // RFC 8037 appendix A.3: thumbprint of the Ed25519 example key.
        let k = Jwk::parse(
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
        )
        .unwrap();
        assert_eq!(
            k.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
