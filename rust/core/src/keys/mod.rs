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

mod hpke;
pub mod identity;
mod jwk;
mod stanza;

pub(crate) use jwk::p256_key_pair;
pub use jwk::{Jwk, KeyKind};
#[cfg(test)]
pub(crate) use stanza::UNWRAPS;
pub use stanza::{unwrap, wrap, Recipient, MAX_RECIPIENTS, MAX_STANZA_BYTES};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{DataKey, SecretBytes};
    use ring::digest;
    use ring::signature::KeyPair;

    /// Stanzas this crate makes pass the check given to stanzas made
    /// elsewhere; malformed ones do not.
    #[test]
    fn recipient_check() {
        let dk = DataKey::generate().unwrap();
        for kind in [KeyKind::Oct, KeyKind::X25519] {
            let k = Jwk::generate(kind).unwrap();
            let r = wrap(&dk, &k.public().unwrap_or(k.clone())).unwrap();
            r.check().unwrap();
            assert_eq!(Recipient::parse(&r.to_json()).unwrap(), r);
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
        assert!(Recipient::parse(r#"{"kid":"a"}"#).is_err());
        assert!(Recipient::parse(r#"[{"kid":"a"}]"#).is_err());
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
