//! JOSE keys (RFC 7517, 7518, 8037) and the recipient stanzas that wrap a
//! file's data key. See FORMAT.md §6.
//!
//! - `kty: "oct"` keys wrap with `A256GCMKW` (RFC 7518 §4.7).
//! - `kty: "OKP", crv: "X25519"` keys wrap with HPKE base mode (RFC 9180):
//!   DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
//! - `kty: "OKP", crv: "Ed25519"` keys sign with `EdDSA` (see `sign`).
//! - `kty: "EC", crv: "P-256"` keys sign with `ES256` (RFC 7518 §3.4, §6.2).
//!
//! A file names its recipients by `kid`; the loader decides which keys it
//! holds. A kid never selects a key outside the loader's own key ring.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use ring::{agreement, digest, hkdf, hmac};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{fill_random, DataKey, SecretBytes};
use crate::error::{Error, Result};

/// JWE algorithm of symmetric recipients.
pub const ALG_A256GCMKW: &str = "A256GCMKW";
/// Recipient algorithm of X25519 keys: RFC 9180 base mode with
/// DHKEM(X25519, HKDF-SHA256) (0x0020), HKDF-SHA256 (0x0001) and
/// ChaCha20-Poly1305 (0x0003).
pub const ALG_HPKE: &str = "HPKE-Base-X25519-SHA256-ChaCha20Poly1305";
/// JWS algorithm of Ed25519 signing keys.
pub const ALG_EDDSA: &str = "EdDSA";
/// JWS algorithm of P-256 signing keys: ECDSA over P-256 with SHA-256,
/// signatures as the 64-byte `r || s` (RFC 7518 §3.4).
pub const ALG_ES256: &str = "ES256";
/// Recipient algorithm of a key held by a key service (HashiCorp Vault or
/// OpenBao Transit, FORMAT.md §6.4): the stanza holds the service's
/// ciphertext of the data key, which only a key provider can open.
pub const ALG_VAULT_TRANSIT: &str = "vault-transit";
/// Longest `ciphertext` of a key-service stanza.
pub const MAX_SERVICE_CIPHERTEXT: usize = 2048;
/// Length of an uncompressed P-256 point: `0x04 || x || y`.
pub const P256_POINT_LEN: usize = 65;
/// The HPKE `info` string, which binds wrapped keys to this format.
pub const HPKE_INFO: &[u8] = b"cryptotensors/v1 data key";

/// Decodes base64url without padding, the only encoding JOSE allows.
pub fn b64d(field: &str, s: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| {
        Error::InvalidKey(format!("member {field:?} is not base64url without padding"))
    })
}

/// Encodes base64url without padding.
pub fn b64e(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

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
    kind: KeyKind,
    /// The secret: `k` for oct, `d` for OKP and EC keys.
    secret: Option<SecretBytes>,
    /// The public `x` of OKP and EC keys.
    public: [u8; 32],
    /// The public `y` of EC keys (zero for the others).
    public_y: [u8; 32],
    kid: String,
    thumbprint: String,
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

/// The PKCS#8 v1 document `EcdsaKeyPair::generate_pkcs8` returns for P-256
/// is ring's fixed template with the key spliced in:
/// `PREFIX || d (32) || MIDDLE || 0x04 || x (32) || y (32)` (RFC 5958,
/// RFC 5915 `ECPrivateKey` with the public key and no parameters).
const P256_PKCS8_PREFIX: [u8; 36] = [
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
    0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02,
    0x01, 0x01, 0x04, 0x20,
];
const P256_PKCS8_MIDDLE: [u8; 5] = [0xa1, 0x44, 0x03, 0x42, 0x00];

/// A fresh P-256 key: ring generates it; `d` is read out of the PKCS#8
/// document (whose layout is checked byte for byte) and the pair is then
/// rebuilt from `d` and the point, which ring checks for consistency.
fn p256_generate() -> Result<(SecretBytes, [u8; 32], [u8; 32])> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| Error::Io(std::io::Error::other("system random source failed")))?;
    let der = doc.as_ref();
    let layout_error = || Error::InvalidKey("unexpected PKCS#8 layout from ring".into());
    let d_at = P256_PKCS8_PREFIX.len();
    let point_at = d_at + 32 + P256_PKCS8_MIDDLE.len();
    if der.len() != point_at + P256_POINT_LEN
        || der[..d_at] != P256_PKCS8_PREFIX
        || der[d_at + 32..point_at] != P256_PKCS8_MIDDLE
    {
        return Err(layout_error());
    }
    let d = SecretBytes::from_slice(&der[d_at..d_at + 32]).ok_or_else(layout_error)?;
    let point: [u8; P256_POINT_LEN] = der[point_at..].try_into().map_err(|_| layout_error())?;
    let pair = p256_key_pair(&d, &point).map_err(|_| layout_error())?;
    if pair.public_key().as_ref() != point.as_slice() || point[0] != 0x04 {
        return Err(layout_error());
    }
    let x: [u8; 32] = point[1..33].try_into().expect("32 bytes");
    let y: [u8; 32] = point[33..].try_into().expect("32 bytes");
    Ok((d, x, y))
}

/// Most recipient stanzas a file may list (FORMAT.md §3.2). Each is a
/// trial unwrap for every loader key that matches its kid, so a forged file
/// with thousands of stanzas under a victim's kid must not be opened at all.
pub const MAX_RECIPIENTS: usize = 64;
/// Largest stanza, as its compact JSON encoding (FORMAT.md §6).
pub const MAX_STANZA_BYTES: usize = 4096;

/// One recipient of a file: a wrapped copy of the data key (FORMAT.md §6).
///
/// A stanza of a known `alg` has exactly that algorithm's members. A stanza
/// of an `alg` this build does not know is kept with all its members in
/// [`Recipient::other`] (written back unchanged by a rewrap) and never
/// opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The recipient key's id.
    pub kid: String,
    /// `A256GCMKW` or [`ALG_HPKE`], or one this build does not know.
    pub alg: String,
    /// A256GCMKW: the 96-bit IV.
    pub iv: Option<String>,
    /// A256GCMKW: the 128-bit tag.
    pub tag: Option<String>,
    /// HPKE: the encapsulated key (the ephemeral X25519 public key).
    pub enc: Option<String>,
    /// The wrapped data key (HPKE: ciphertext and tag); empty for an
    /// unknown `alg`.
    pub encrypted_key: String,
    /// Every member but `kid` and `alg` of a stanza whose `alg` is unknown;
    /// empty for known ones.
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// The members of a known stanza algorithm besides `kid` and `alg`.
fn known_members(alg: &str) -> Option<&'static [&'static str]> {
    match alg {
        ALG_A256GCMKW => Some(&["iv", "tag", "encrypted_key"]),
        ALG_HPKE => Some(&["enc", "encrypted_key"]),
        _ => None,
    }
}

/// The members besides `kid` and `alg` of a key-service stanza (§6.4),
/// whose `alg` this build knows but whose key it never holds: they are
/// kept in [`Recipient::other`] and opened only by key providers.
fn service_members(alg: &str) -> Option<&'static [&'static str]> {
    match alg {
        ALG_VAULT_TRANSIT => Some(&["ciphertext"]),
        _ => None,
    }
}

/// Checks the members of a key-service stanza: exactly those of its `alg`,
/// each a non-empty printable-ASCII string of at most
/// [`MAX_SERVICE_CIPHERTEXT`] bytes.
fn check_service_members(
    kid: &str,
    alg: &str,
    members: &[&str],
    m: &serde_json::Map<String, serde_json::Value>,
) -> std::result::Result<(), String> {
    if let Some(extra) = m.keys().find(|k| !members.contains(&k.as_str())) {
        return Err(format!(
            "recipient {kid:?}: unknown member {extra:?} for alg {alg:?}"
        ));
    }
    for name in members {
        match m.get(*name) {
            Some(serde_json::Value::String(s))
                if !s.is_empty()
                    && s.len() <= MAX_SERVICE_CIPHERTEXT
                    && s.bytes().all(|b| b.is_ascii_graphic()) => {}
            Some(_) => {
                return Err(format!(
                    "recipient {kid:?}: {name:?} must be a printable string of 1 to {MAX_SERVICE_CIPHERTEXT} bytes"
                ))
            }
            None => return Err(format!("recipient {kid:?} lacks {name:?}")),
        }
    }
    Ok(())
}

impl Recipient {
    /// The stanza as compact JSON, every member included.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a stanza serializes")
    }

    /// Whether this build knows the stanza's algorithm (else it is skipped).
    pub fn is_known(&self) -> bool {
        known_members(&self.alg).is_some()
    }

    fn from_members(
        mut m: serde_json::Map<String, serde_json::Value>,
    ) -> std::result::Result<Recipient, String> {
        let size = serde_json::to_vec(&m).map_err(|e| e.to_string())?.len();
        if size > MAX_STANZA_BYTES {
            return Err(format!(
                "a recipient stanza is {size} bytes, more than {MAX_STANZA_BYTES}"
            ));
        }
        fn string(
            m: &mut serde_json::Map<String, serde_json::Value>,
            name: &str,
        ) -> std::result::Result<Option<String>, String> {
            match m.remove(name) {
                None => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(format!("recipient member {name:?} must be a string")),
            }
        }
        let kid = string(&mut m, "kid")?.ok_or("a recipient stanza has no \"kid\"")?;
        let alg = string(&mut m, "alg")?.ok_or("a recipient stanza has no \"alg\"")?;
        if kid.is_empty() {
            return Err("a recipient stanza has an empty \"kid\"".into());
        }
        if let Some(members) = service_members(&alg) {
            check_service_members(&kid, &alg, members, &m)?;
        }
        let Some(members) = known_members(&alg) else {
            return Ok(Recipient {
                kid,
                alg,
                iv: None,
                tag: None,
                enc: None,
                encrypted_key: String::new(),
                other: m,
            });
        };
        if let Some(extra) = m.keys().find(|k| !members.contains(&k.as_str())) {
            return Err(format!(
                "recipient {kid:?}: unknown member {extra:?} for alg {alg:?}"
            ));
        }
        let mut take = |name: &str| -> std::result::Result<Option<String>, String> {
            match members.contains(&name) {
                true => string(&mut m, name)?
                    .map(Some)
                    .ok_or_else(|| format!("recipient {kid:?} lacks {name:?}")),
                false => Ok(None),
            }
        };
        Ok(Recipient {
            iv: take("iv")?,
            tag: take("tag")?,
            enc: take("enc")?,
            encrypted_key: take("encrypted_key")?.unwrap_or_default(),
            other: serde_json::Map::new(),
            kid,
            alg,
        })
    }
}

impl<'de> Deserialize<'de> for Recipient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let m = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        Recipient::from_members(m).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Recipient {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("kid", &self.kid)?;
        map.serialize_entry("alg", &self.alg)?;
        if self.is_known() {
            for (name, v) in [("iv", &self.iv), ("tag", &self.tag), ("enc", &self.enc)] {
                if let Some(v) = v {
                    map.serialize_entry(name, v)?;
                }
            }
            map.serialize_entry("encrypted_key", &self.encrypted_key)?;
        } else {
            for (k, v) in &self.other {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

impl Recipient {
    /// Parses a JSON list of stanzas made outside this crate, each checked
    /// with [`Recipient::check`].
    pub fn parse_list(json: &str) -> Result<Vec<Recipient>> {
        crate::header::unique_members(json).map_err(|_| {
            Error::InvalidArgument("recipient stanzas repeat a member, or are not JSON".into())
        })?;
        let list: Vec<Recipient> = serde_json::from_str(json).map_err(|e| {
            Error::InvalidArgument(format!(
                "not a list of recipient stanzas ({:?} error)",
                e.classify()
            ))
        })?;
        list.iter().try_for_each(Recipient::check)?;
        Ok(list)
    }

    /// Parses `[[old, new], ...]`, stanzas to replace in a rewrap; each
    /// `new` is checked with [`Recipient::check`] where it is used.
    pub fn parse_pairs(json: &str) -> Result<Vec<(Recipient, Recipient)>> {
        crate::header::unique_members(json).map_err(|_| {
            Error::InvalidArgument("replacement stanzas repeat a member, or are not JSON".into())
        })?;
        serde_json::from_str(json).map_err(|e| {
            Error::InvalidArgument(format!(
                "not a list of [old, new] recipient stanzas ({:?} error)",
                e.classify()
            ))
        })
    }

    /// Checks a stanza made outside this crate (by an HSM, say) before it
    /// goes into a file: a known algorithm with exactly its members, each
    /// base64url of the right length. It cannot check that the stanza opens.
    pub fn check(&self) -> Result<()> {
        let len = |name: &str, v: &Option<String>, n: usize| -> Result<()> {
            match decode_field(self, name, v)?.len() == n {
                true => Ok(()),
                false => Err(Error::InvalidEnvelope(format!(
                    "recipient {:?}: {name:?} must be {n} bytes",
                    self.kid
                ))),
            }
        };
        if self.kid.is_empty() {
            return Err(Error::InvalidEnvelope("a recipient needs a kid".into()));
        }
        let key = Some(self.encrypted_key.clone());
        match self.alg.as_str() {
            ALG_A256GCMKW if self.enc.is_none() => {
                len("iv", &self.iv, 12)?;
                len("tag", &self.tag, 16)?;
                len("encrypted_key", &key, 32)
            }
            ALG_HPKE if self.iv.is_none() && self.tag.is_none() => {
                len("enc", &self.enc, 32)?;
                len("encrypted_key", &key, 48)
            }
            alg if service_members(alg).is_some()
                && self.iv.is_none()
                && self.tag.is_none()
                && self.enc.is_none()
                && self.encrypted_key.is_empty() =>
            {
                let members = service_members(alg).expect("a service alg");
                check_service_members(&self.kid, alg, members, &self.other)
                    .map_err(Error::InvalidEnvelope)
            }
            _ => Err(Error::InvalidEnvelope(format!(
                "recipient {:?}: unsupported algorithm or members ({:?})",
                self.kid, self.alg
            ))),
        }
    }
}

fn gcm_key(key: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, key).expect("32-byte key"))
}

fn decode_field(r: &Recipient, name: &str, v: &Option<String>) -> Result<Vec<u8>> {
    let s = v
        .as_deref()
        .ok_or_else(|| Error::InvalidEnvelope(format!("recipient {:?} lacks {name:?}", r.kid)))?;
    URL_SAFE_NO_PAD.decode(s).map_err(|_| {
        Error::InvalidEnvelope(format!("recipient {:?}: {name:?} is not base64url", r.kid))
    })
}

/// Wraps a data key for one recipient key.
pub fn wrap(data_key: &DataKey, to: &Jwk) -> Result<Recipient> {
    match to.kind {
        KeyKind::Oct => {
            let kek = to.secret.as_ref().expect("oct keys are secret");
            let mut iv = [0u8; 12];
            fill_random(&mut iv)?;
            let mut ct = Zeroizing::new(data_key.0.expose().to_vec());
            let tag = gcm_key(kek.expose())
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut ct)
                .map_err(|_| Error::Integrity)?;
            Ok(Recipient {
                kid: to.kid.clone(),
                alg: ALG_A256GCMKW.into(),
                iv: Some(b64e(&iv)),
                tag: Some(b64e(tag.as_ref())),
                enc: None,
                encrypted_key: b64e(&ct),
                other: serde_json::Map::new(),
            })
        }
        KeyKind::X25519 => {
            let ephemeral = SecretBytes::random()?;
            let (enc, ct) =
                hpke::seal(&to.public, &ephemeral, HPKE_INFO, b"", data_key.0.expose())?;
            Ok(Recipient {
                kid: to.kid.clone(),
                alg: ALG_HPKE.into(),
                iv: None,
                tag: None,
                enc: Some(b64e(&enc)),
                encrypted_key: b64e(&ct),
                other: serde_json::Map::new(),
            })
        }
        KeyKind::Ed25519 | KeyKind::P256 => Err(Error::InvalidKey(format!(
            "an {} key signs; it cannot be an encryption recipient",
            if to.kind == KeyKind::P256 {
                "EC P-256"
            } else {
                "Ed25519"
            }
        ))),
    }
}

/// Tries to unwrap a recipient stanza with one key. `None`: not this key's
/// stanza. `Some(Err(Integrity))`: this key's stanza, but it does not open.
pub fn unwrap(r: &Recipient, key: &Jwk) -> Option<Result<DataKey>> {
    if !key.matches(&r.kid) || r.alg != key.kind.alg() {
        return None;
    }
    let secret = key.secret.as_ref()?;
    Some(unwrap_with(r, key, secret))
}

#[cfg(test)]
thread_local! {
    /// Trial unwraps made on this thread, for tests that bound them.
    pub(crate) static UNWRAPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn unwrap_with(r: &Recipient, key: &Jwk, secret: &SecretBytes) -> Result<DataKey> {
    #[cfg(test)]
    UNWRAPS.with(|n| n.set(n.get() + 1));
    let mut ct = Zeroizing::new(decode_field(
        r,
        "encrypted_key",
        &Some(r.encrypted_key.clone()),
    )?);
    let plain: Zeroizing<Vec<u8>> = match key.kind {
        KeyKind::Oct => {
            let iv: [u8; 12] = decode_field(r, "iv", &r.iv)?
                .try_into()
                .map_err(|_| Error::Integrity)?;
            let tag = aead::Tag::try_from(decode_field(r, "tag", &r.tag)?.as_slice())
                .map_err(|_| Error::Integrity)?;
            gcm_key(secret.expose())
                .open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(iv),
                    Aad::empty(),
                    tag,
                    &mut ct,
                    0..,
                )
                .map_err(|_| Error::Integrity)?;
            Zeroizing::new(ct.to_vec())
        }
        KeyKind::X25519 => {
            let enc: [u8; 32] = decode_field(r, "enc", &r.enc)?
                .try_into()
                .map_err(|_| Error::Integrity)?;
            hpke::open(secret, &key.public, &enc, HPKE_INFO, b"", &ct)?
        }
        KeyKind::Ed25519 | KeyKind::P256 => return Err(Error::Integrity),
    };
    SecretBytes::from_slice(&plain)
        .map(DataKey)
        .ok_or(Error::Integrity)
}

/// RFC 9180 base mode, single shot, for DHKEM(X25519, HKDF-SHA256),
/// HKDF-SHA256 and ChaCha20-Poly1305. Only what wrapping a key needs.
pub(crate) mod hpke {
    use super::*;

    const KEM_ID: u16 = 0x0020;
    const KDF_ID: u16 = 0x0001;
    const AEAD_ID: u16 = 0x0003;

    fn kem_suite() -> Vec<u8> {
        let mut s = b"KEM".to_vec();
        s.extend_from_slice(&KEM_ID.to_be_bytes());
        s
    }

    fn hpke_suite() -> Vec<u8> {
        let mut s = b"HPKE".to_vec();
        for id in [KEM_ID, KDF_ID, AEAD_ID] {
            s.extend_from_slice(&id.to_be_bytes());
        }
        s
    }

    /// LabeledExtract: HMAC-SHA256(salt, "HPKE-v1" || suite || label || ikm).
    fn labeled_extract(salt: &[u8], suite: &[u8], label: &[u8], ikm: &[u8]) -> Zeroizing<[u8; 32]> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, salt);
        let mut ctx = hmac::Context::with_key(&key);
        for part in [b"HPKE-v1".as_slice(), suite, label, ikm] {
            ctx.update(part);
        }
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }

    /// LabeledExpand: HKDF-Expand(prk, I2OSP(L, 2) || "HPKE-v1" || suite || label || info, L).
    fn labeled_expand(prk: &[u8], suite: &[u8], label: &[u8], info: &[u8], out: &mut [u8]) {
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, prk);
        let l = (out.len() as u16).to_be_bytes();
        prk.expand(&[&l, b"HPKE-v1", suite, label, info], Len(out.len()))
            .and_then(|okm| okm.fill(out))
            .expect("short HKDF output");
    }

    fn shared_secret(
        dh: &[u8; 32],
        enc: &[u8; 32],
        pk_r: &[u8; 32],
    ) -> Result<Zeroizing<[u8; 32]>> {
        // RFC 7748 §6.1: an all-zero shared secret means a low-order point.
        if dh.iter().all(|&b| b == 0) {
            return Err(Error::Integrity);
        }
        let suite = kem_suite();
        let eae_prk = labeled_extract(b"", &suite, b"eae_prk", dh);
        let mut kem_context = [0u8; 64];
        kem_context[..32].copy_from_slice(enc);
        kem_context[32..].copy_from_slice(pk_r);
        let mut ss = Zeroizing::new([0u8; 32]);
        labeled_expand(
            eae_prk.as_ref(),
            &suite,
            b"shared_secret",
            &kem_context,
            ss.as_mut(),
        );
        Ok(ss)
    }

    fn key_schedule(ss: &[u8; 32], info: &[u8]) -> (Zeroizing<[u8; 32]>, [u8; 12]) {
        let suite = hpke_suite();
        let psk_id_hash = labeled_extract(b"", &suite, b"psk_id_hash", b"");
        let info_hash = labeled_extract(b"", &suite, b"info_hash", info);
        let mut context = Vec::with_capacity(65);
        context.push(0u8); // mode_base
        context.extend_from_slice(psk_id_hash.as_ref());
        context.extend_from_slice(info_hash.as_ref());
        let secret = labeled_extract(ss, &suite, b"secret", b"");
        let mut key = Zeroizing::new([0u8; 32]);
        labeled_expand(secret.as_ref(), &suite, b"key", &context, key.as_mut());
        let mut nonce = [0u8; 12];
        labeled_expand(secret.as_ref(), &suite, b"base_nonce", &context, &mut nonce);
        (key, nonce)
    }

    fn aead_key(key: &[u8; 32]) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&aead::CHACHA20_POLY1305, key).expect("32-byte key"))
    }

    /// Encapsulates to `pk_r` with the ephemeral secret `sk_e` and seals
    /// `plaintext` as the first message. Returns `(enc, ciphertext || tag)`.
    pub fn seal(
        pk_r: &[u8; 32],
        sk_e: &SecretBytes,
        info: &[u8],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<([u8; 32], Vec<u8>)> {
        let sk = x25519_dalek::StaticSecret::from(*sk_e.expose());
        let enc = x25519_dalek::PublicKey::from(&sk).to_bytes();
        let dh = Zeroizing::new(
            sk.diffie_hellman(&x25519_dalek::PublicKey::from(*pk_r))
                .to_bytes(),
        );
        let ss = shared_secret(&dh, &enc, pk_r)?;
        let (key, nonce) = key_schedule(&ss, info);
        let mut ct = plaintext.to_vec();
        aead_key(&key)
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut ct)
            .map_err(|_| Error::Integrity)?;
        Ok((enc, ct))
    }

    /// Decapsulates `enc` with the recipient's secret and opens `ct`.
    pub fn open(
        sk_r: &SecretBytes,
        pk_r: &[u8; 32],
        enc: &[u8; 32],
        info: &[u8],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let sk = x25519_dalek::StaticSecret::from(*sk_r.expose());
        let dh = Zeroizing::new(
            sk.diffie_hellman(&x25519_dalek::PublicKey::from(*enc))
                .to_bytes(),
        );
        let ss = shared_secret(&dh, enc, pk_r)?;
        let (key, nonce) = key_schedule(&ss, info);
        let mut buf = Zeroizing::new(ct.to_vec());
        let n = aead_key(&key)
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| Error::Integrity)?
            .len();
        Ok(Zeroizing::new(buf[..n].to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stanzas this crate makes pass the check given to stanzas made
    /// elsewhere; malformed ones do not.
    #[test]
    fn recipient_check() {
        let dk = DataKey::generate().unwrap();
        for kind in [KeyKind::Oct, KeyKind::X25519] {
            let k = Jwk::generate(kind).unwrap();
            let r = wrap(&dk, &k.public().unwrap_or(k.clone())).unwrap();
            r.check().unwrap();
            let json = serde_json::to_string(&vec![r.clone()]).unwrap();
            assert_eq!(Recipient::parse_list(&json).unwrap(), vec![r.clone()]);
            let mut bad = r.clone();
            bad.encrypted_key.pop();
            assert!(bad.check().is_err());
            let mut bad = r.clone();
            bad.kid.clear();
            assert!(bad.check().is_err());
            let mut bad = r;
            bad.alg = "dir".into();
            assert!(bad.check().is_err());
        }
        assert!(Recipient::parse_list(r#"[{"kid":"a"}]"#).is_err());
    }

    /// A Transit stanza (§6.4) is accepted from a wrapper with exactly its
    /// members, written back as it came, and refused when malformed, in a
    /// list made elsewhere and in a file alike.
    #[test]
    fn vault_transit_stanza() {
        let good = r#"[{"kid":"model-kek","alg":"vault-transit","ciphertext":"vault:v1:QUJD"}]"#;
        let list = Recipient::parse_list(good).unwrap();
        assert!(!list[0].is_known());
        assert_eq!(serde_json::to_string(&list).unwrap(), good);
        for bad in [
            r#"[{"kid":"k","alg":"vault-transit"}]"#,
            r#"[{"kid":"k","alg":"vault-transit","ciphertext":""}]"#,
            r#"[{"kid":"k","alg":"vault-transit","ciphertext":7}]"#,
            r#"[{"kid":"k","alg":"vault-transit","ciphertext":"a b"}]"#,
            r#"[{"kid":"k","alg":"vault-transit","ciphertext":"x","addr":"https://evil"}]"#,
        ] {
            assert!(Recipient::parse_list(bad).is_err(), "{bad}");
            assert!(
                serde_json::from_str::<Vec<Recipient>>(bad).is_err(),
                "{bad}"
            );
        }
        let mut forged = list[0].clone();
        forged.encrypted_key = "AAAA".into();
        assert!(forged.check().is_err());
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

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

    #[test]
    fn wrap_unwrap_both_kinds() {
        for kind in [KeyKind::Oct, KeyKind::X25519] {
            let key = Jwk::generate(kind).unwrap();
            let dk = DataKey::generate().unwrap();
            let to = if kind == KeyKind::Oct {
                key.clone()
            } else {
                key.public().unwrap()
            };
            let r = wrap(&dk, &to).unwrap();
            let got = unwrap(&r, &key).unwrap().unwrap();
            assert_eq!(got.0, dk.0);
            assert!(
                unwrap(&r, &Jwk::generate(kind).unwrap()).is_none(),
                "other kid"
            );
            let mut bad = r.clone();
            let mut ct = b64d("x", &bad.encrypted_key).unwrap();
            ct[0] ^= 1;
            bad.encrypted_key = b64e(&ct);
            assert!(matches!(unwrap(&bad, &key), Some(Err(Error::Integrity))));
        }
    }

    #[test]
    fn hpke_rfc9180_a2_vector() {
        // RFC 9180 A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305, base mode.
        let info = unhex("4f6465206f6e2061204772656369616e2055726e");
        let sk_e = SecretBytes::from_slice(&unhex(
            "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600",
        ))
        .unwrap();
        let sk_r = SecretBytes::from_slice(&unhex(
            "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb",
        ))
        .unwrap();
        let pk_r: [u8; 32] =
            unhex("4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a")
                .try_into()
                .unwrap();
        let pt = unhex("4265617574792069732074727574682c20747275746820626561757479");
        let aad = b"Count-0";
        let (enc, ct) = hpke::seal(&pk_r, &sk_e, &info, aad, &pt).unwrap();
        assert_eq!(
            enc.to_vec(),
            unhex("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a")
        );
        assert_eq!(ct, unhex("1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28"));
        let back = hpke::open(&sk_r, &pk_r, &enc, &info, aad, &ct).unwrap();
        assert_eq!(&back[..], &pt[..]);
    }
}
