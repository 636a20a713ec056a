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
//!
//! One file per concept: `jwk` (parsing, generation, export), `stanza` (the
//! recipient stanza, its checks, and the dispatch of wrap and unwrap by key
//! kind), one file per recipient type (`a256gcmkw`, `x25519`), `hpke` (RFC
//! 9180), and `identity` (the traits the reader and the writer ask).

mod a256gcmkw;
mod hpke;
mod identity;
mod jwk;
mod stanza;
mod x25519;

pub(crate) use identity::Pinned;
pub use identity::{provided_key, Identity, KeyWrapper, Providers};

pub(crate) use jwk::p256_key_pair;
pub use jwk::{Jwk, KeyKind};
#[cfg(test)]
pub(crate) use stanza::UNWRAPS;
pub use stanza::{unwrap, wrap, Recipient, MAX_RECIPIENTS, MAX_STANZA_BYTES};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::error::{Error, Result};

/// JWE algorithm of symmetric recipients.
pub(crate) const ALG_A256GCMKW: &str = "A256GCMKW";
/// Recipient algorithm of X25519 keys: RFC 9180 base mode with
/// DHKEM(X25519, HKDF-SHA256) (0x0020), HKDF-SHA256 (0x0001) and
/// ChaCha20-Poly1305 (0x0003).
pub(crate) const ALG_HPKE: &str = "HPKE-Base-X25519-SHA256-ChaCha20Poly1305";
/// JWS algorithm of Ed25519 signing keys.
pub(crate) const ALG_EDDSA: &str = "EdDSA";
/// JWS algorithm of P-256 signing keys: ECDSA over P-256 with SHA-256,
/// signatures as the 64-byte `r || s` (RFC 7518 §3.4).
pub(crate) const ALG_ES256: &str = "ES256";
/// Recipient algorithm of a key held by a key service (HashiCorp Vault or
/// OpenBao Transit, FORMAT.md §6.4): the stanza holds the service's
/// ciphertext of the data key, which only a key provider can open.
pub(crate) const ALG_VAULT_TRANSIT: &str = "vault-transit";
/// Longest `ciphertext` of a key-service stanza.
pub(crate) const MAX_SERVICE_CIPHERTEXT: usize = 2048;
/// Length of an uncompressed P-256 point: `0x04 || x || y`.
pub(crate) const P256_POINT_LEN: usize = 65;
/// The HPKE `info` string, which binds wrapped keys to this format.
pub(crate) const HPKE_INFO: &[u8] = b"cryptotensors/v1 data key";

/// Decodes base64url without padding, the only encoding JOSE allows.
pub(crate) fn b64d(field: &str, s: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| {
        Error::InvalidKey(format!("member {field:?} is not base64url without padding"))
    })
}

/// Encodes base64url without padding.
pub(crate) fn b64e(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Hex test vectors (RFC 9180, RFC 7748…) as bytes.
#[cfg(test)]
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
