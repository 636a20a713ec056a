//! Header signatures: a JWS (RFC 7515) with detached payload, `EdDSA` over
//! Ed25519 (RFC 8037) or `ES256`, ECDSA over P-256 with SHA-256 (RFC 7518
//! §3.4). The payload is the canonical header. See FORMAT.md §7.
//!
//! Trust comes only from the loader's list of public keys. The `jwk` in the
//! protected header is a hint used to tell "untrusted signer" from "broken
//! signature"; it never makes a file trusted. The algorithm a key verifies
//! with is the one of its type: a header `alg` that differs is refused, so a
//! file cannot choose how a trusted key is used.

use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, SignatureFailure};
use crate::keys::{b64d, b64e, p256_key_pair, Jwk, KeyKind, ALG_EDDSA, ALG_ES256};

/// The JWS protected header. Unknown members (`crit`, `b64`, ...) are
/// rejected: they could change what the signature means.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Protected {
    alg: String,
    kid: String,
    jwk: serde_json::Value,
}

/// Signs `payload` with an Ed25519 (`EdDSA`) or P-256 (`ES256`) private
/// JWK; returns the compact JWS with its payload detached
/// (`protected..signature`).
pub fn sign(payload: &[u8], key: &Jwk) -> Result<String> {
    if !key.kind().signs() {
        return Err(Error::InvalidKey(
            "signing needs an Ed25519 (OKP) or P-256 (EC) key".into(),
        ));
    }
    let secret = key
        .secret()
        .ok_or_else(|| Error::InvalidKey("signing needs the private key (\"d\")".into()))?;
    let public: serde_json::Value =
        serde_json::from_str(&key.public()?.to_json(false)?).expect("JSON");
    let protected = Protected {
        alg: key.kind().alg().into(),
        kid: key.kid().into(),
        jwk: public,
    };
    let protected = b64e(serde_json::to_string(&protected).expect("JSON").as_bytes());
    let input = signing_input(&protected, payload);
    let sig = match key.kind() {
        KeyKind::P256 => {
            let point = key.p256_point().expect("P-256 key");
            let rng = SystemRandom::new();
            let pair = p256_key_pair(secret, &point)?;
            // ECDSA_P256_SHA256_FIXED_SIGNING: the 64-byte r || s of JWS.
            let sig = pair
                .sign(&rng, input.as_bytes())
                .map_err(|_| Error::Io(std::io::Error::other("ECDSA signing failed")))?;
            sig.as_ref().to_vec()
        }
        _ => Ed25519KeyPair::from_seed_and_public_key(secret.expose(), key.public_bytes())
            .map_err(|_| Error::InvalidKey("Ed25519 key pair is inconsistent".into()))?
            .sign(input.as_bytes())
            .as_ref()
            .to_vec(),
    };
    Ok(format!("{protected}..{}", b64e(&sig)))
}

/// Whether `k` verifies `sig` over `input` under `alg`. The algorithm is the
/// key's own: an `alg` of another type never verifies.
fn verifies(k: &Jwk, alg: &str, input: &[u8], sig: &[u8]) -> bool {
    if !k.kind().signs() || k.kind().alg() != alg {
        return false;
    }
    match k.p256_point() {
        // Fixed r || s (64 bytes); ring refuses any other length.
        Some(point) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
            .verify(input, sig)
            .is_ok(),
        None => UnparsedPublicKey::new(&signature::ED25519, k.public_bytes())
            .verify(input, sig)
            .is_ok(),
    }
}

fn signing_input(protected: &str, payload: &[u8]) -> String {
    format!("{protected}.{}", b64e(payload))
}

/// Private JWK members: a protected header that carries one publishes a
/// secret, and is refused rather than read (FORMAT.md §7).
const PRIVATE_MEMBERS: [&str; 2] = ["d", "k"];

/// A protected header as FORMAT.md §7 allows it, with its `jwk` parsed.
struct ProtectedHeader {
    alg: String,
    kid: String,
    key: Jwk,
}

/// Parses the encoded protected header: strict JSON (no repeated member,
/// no member beyond `alg`, `kid`, `jwk`), a known `alg`, and a `jwk` that
/// is a valid public key of that algorithm's type. None otherwise.
fn parse_protected(encoded: &str) -> Option<ProtectedHeader> {
    let text = String::from_utf8(b64d("protected", encoded).ok()?).ok()?;
    crate::header::unique_members(&text).ok()?;
    let p: Protected = serde_json::from_str(&text).ok()?;
    if p.alg != ALG_EDDSA && p.alg != ALG_ES256 {
        return None;
    }
    let jwk = p.jwk.as_object()?;
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return None;
    }
    let key = Jwk::parse(&p.jwk.to_string()).ok()?;
    (key.kind().alg() == p.alg && !key.is_private()).then_some(ProtectedHeader {
        alg: p.alg,
        kid: p.kid,
        key,
    })
}

/// The signer named by a signature, unverified: for display only.
pub fn signer_hint(jws: &str) -> Option<String> {
    Some(parse_protected(jws.split('.').next()?)?.kid)
}

/// Verifies a detached JWS over `payload`. With `trusted` empty, only
/// checks that the signature is intact under the key it names (no trust);
/// otherwise one trusted key must verify it. Returns the signer's kid.
pub fn verify(jws: &str, payload: &[u8], trusted: &[Jwk]) -> Result<String> {
    let invalid = Error::Signature(SignatureFailure::Invalid);
    let mut parts = jws.split('.');
    let (Some(protected), Some(""), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid);
    };
    let header = parse_protected(protected).ok_or(Error::Signature(SignatureFailure::Invalid))?;
    let sig = b64d("signature", sig).map_err(|_| Error::Signature(SignatureFailure::Invalid))?;
    let input = signing_input(protected, payload);
    let check = |k: &Jwk| verifies(k, &header.alg, input.as_bytes(), &sig);
    if let Some(k) = trusted.iter().find(|k| check(k)) {
        return Ok(k.kid().to_owned());
    }
    let hinted = Some(&header.key).filter(|k| check(k));
    match (hinted, trusted.is_empty()) {
        (Some(k), true) => Ok(k.kid().to_owned()),
        (Some(_), false) => Err(Error::Signature(SignatureFailure::Untrusted)),
        (None, _) => Err(invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_trust() {
        let sk = Jwk::generate(KeyKind::Ed25519).unwrap();
        let pk = sk.public().unwrap();
        let other = Jwk::generate(KeyKind::Ed25519).unwrap().public().unwrap();
        let jws = sign(b"header", &sk).unwrap();
        assert_eq!(
            verify(&jws, b"header", std::slice::from_ref(&pk)).unwrap(),
            pk.kid()
        );
        assert_eq!(verify(&jws, b"header", &[]).unwrap(), pk.kid());
        assert!(matches!(
            verify(&jws, b"header", &[other]),
            Err(Error::Signature(SignatureFailure::Untrusted))
        ));
        assert!(matches!(
            verify(&jws, b"headeX", std::slice::from_ref(&pk)),
            Err(Error::Signature(SignatureFailure::Invalid))
        ));
        assert!(matches!(
            verify("a.b.c", b"header", &[pk]),
            Err(Error::Signature(SignatureFailure::Invalid))
        ));
        assert_eq!(signer_hint(&jws).unwrap(), sk.kid());
    }

    use crate::keys::P256_POINT_LEN;
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    /// RFC 7515 A.3: the ES256 example key.
    const RFC7515_P256: &str = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"}"#;

    /// A detached JWS with any protected header and signature bytes.
    fn forge(header: &serde_json::Value, payload: &[u8], sig: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let protected = b64e(header.to_string().as_bytes());
        let input = signing_input(&protected, payload);
        format!("{protected}..{}", b64e(&sig(input.as_bytes())))
    }

    fn header_of(jws: &str) -> serde_json::Value {
        let protected = jws.split('.').next().unwrap();
        serde_json::from_slice(&b64d("p", protected).unwrap()).unwrap()
    }

    fn sig_of(jws: &str) -> Vec<u8> {
        b64d("s", jws.rsplit('.').next().unwrap()).unwrap()
    }

    fn es256_raw(key: &Jwk, input: &[u8]) -> Vec<u8> {
        let pair = p256_key_pair(key.secret().unwrap(), &key.p256_point().unwrap()).unwrap();
        pair.sign(&SystemRandom::new(), input)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn ed25519_raw(key: &Jwk, input: &[u8]) -> Vec<u8> {
        Ed25519KeyPair::from_seed_and_public_key(key.secret().unwrap().expose(), key.public_bytes())
            .unwrap()
            .sign(input)
            .as_ref()
            .to_vec()
    }

    fn is(r: Result<String>, want: SignatureFailure) -> bool {
        matches!(r, Err(Error::Signature(f)) if f == want)
    }

    #[test]
    fn es256_sign_verify_and_trust() {
        let sk = Jwk::generate(KeyKind::P256).unwrap();
        let pk = sk.public().unwrap();
        let jws = sign(b"header", &sk).unwrap();
        let h = header_of(&jws);
        assert_eq!(h["alg"], "ES256");
        assert_eq!(h["kid"], sk.kid());
        assert_eq!(h["jwk"]["kty"], "EC");
        assert!(h["jwk"].get("d").is_none());
        assert_eq!(sig_of(&jws).len(), 64, "r || s");
        assert_eq!(
            verify(&jws, b"header", std::slice::from_ref(&pk)).unwrap(),
            pk.kid()
        );
        // A private key in the trusted list verifies too.
        assert_eq!(
            verify(&jws, b"header", std::slice::from_ref(&sk)).unwrap(),
            pk.kid()
        );
        assert_eq!(verify(&jws, b"header", &[]).unwrap(), pk.kid());
        let other = Jwk::generate(KeyKind::P256).unwrap().public().unwrap();
        assert!(is(
            verify(&jws, b"header", &[other]),
            SignatureFailure::Untrusted
        ));
        assert!(is(
            verify(&jws, b"headeX", std::slice::from_ref(&pk)),
            SignatureFailure::Invalid
        ));
        assert!(is(verify(&jws, b"headeX", &[]), SignatureFailure::Invalid));
        assert_eq!(signer_hint(&jws).unwrap(), sk.kid());
        // ECDSA is randomized; both signatures verify.
        let again = sign(b"header", &sk).unwrap();
        assert_ne!(again, jws);
        assert_eq!(
            again.len(),
            jws.len(),
            "fixed length for the writer's placeholder"
        );
        assert!(verify(&again, b"header", std::slice::from_ref(&pk)).is_ok());
        // Trusted keys of both kinds: the one that signed wins.
        let ed = Jwk::generate(KeyKind::Ed25519).unwrap().public().unwrap();
        assert_eq!(
            verify(&jws, b"header", &[ed, pk.clone()]).unwrap(),
            pk.kid()
        );
    }

    #[test]
    fn rfc7515_a3_es256_signature_verifies() {
        let k = Jwk::parse(RFC7515_P256).unwrap();
        let input = b"eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let sig = b64d(
            "s",
            "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q",
        )
        .unwrap();
        assert!(verifies(&k, ALG_ES256, input, &sig));
        assert!(!verifies(&k, ALG_EDDSA, input, &sig));
        assert!(!verifies(&k, ALG_ES256, &input[1..], &sig));
    }

    #[test]
    fn algorithm_confusion_refused() {
        let ed_sk = Jwk::generate(KeyKind::Ed25519).unwrap();
        let ed_pk = ed_sk.public().unwrap();
        let ec_sk = Jwk::generate(KeyKind::P256).unwrap();
        let ec_pk = ec_sk.public().unwrap();
        let es256 = sign(b"header", &ec_sk).unwrap();
        let eddsa = sign(b"header", &ed_sk).unwrap();
        // A valid signature of one kind against a trusted key of the other:
        // signed by someone else (its own jwk verifies it).
        assert!(is(
            verify(&es256, b"header", std::slice::from_ref(&ed_pk)),
            SignatureFailure::Untrusted
        ));
        assert!(is(
            verify(&eddsa, b"header", std::slice::from_ref(&ec_pk)),
            SignatureFailure::Untrusted
        ));
        // The file's alg never picks how a trusted key verifies: a genuine
        // Ed25519 signature by the trusted key under "alg": "ES256" is
        // refused (both are 64 bytes), and the same for ES256 under "EdDSA".
        let mut h = header_of(&eddsa);
        h["alg"] = "ES256".into();
        let forged = forge(&h, b"header", |i| ed25519_raw(&ed_sk, i));
        assert!(is(
            verify(&forged, b"header", std::slice::from_ref(&ed_pk)),
            SignatureFailure::Invalid
        ));
        assert!(is(
            verify(&forged, b"header", &[]),
            SignatureFailure::Invalid
        ));
        let mut h = header_of(&es256);
        h["alg"] = "EdDSA".into();
        let forged = forge(&h, b"header", |i| es256_raw(&ec_sk, i));
        assert!(is(
            verify(&forged, b"header", std::slice::from_ref(&ec_pk)),
            SignatureFailure::Invalid
        ));
        assert!(is(
            verify(&forged, b"header", &[]),
            SignatureFailure::Invalid
        ));
        // The untouched headers do verify, so the refusals above are the alg's.
        let h = header_of(&es256);
        assert!(verify(
            &forge(&h, b"header", |i| es256_raw(&ec_sk, i)),
            b"header",
            std::slice::from_ref(&ec_pk)
        )
        .is_ok());
        // Unknown and "none" algorithms.
        for alg in ["none", "ES384", "RS256", "HS256", "es256", ""] {
            let mut h = header_of(&es256);
            h["alg"] = alg.into();
            let jws = forge(&h, b"header", |i| es256_raw(&ec_sk, i));
            assert!(
                is(
                    verify(&jws, b"header", std::slice::from_ref(&ec_pk)),
                    SignatureFailure::Invalid
                ),
                "{alg}"
            );
        }
        // A header jwk of the other type cannot launder the signature either.
        let mut h = header_of(&eddsa);
        h["alg"] = "ES256".into();
        h["jwk"] = serde_json::from_str(&ec_pk.to_json(false).unwrap()).unwrap();
        let forged = forge(&h, b"header", |i| ed25519_raw(&ed_sk, i));
        assert!(is(
            verify(&forged, b"header", &[]),
            SignatureFailure::Invalid
        ));
    }

    #[test]
    fn es256_malformed_signatures_refused() {
        let sk = Jwk::generate(KeyKind::P256).unwrap();
        let pk = sk.public().unwrap();
        let jws = sign(b"header", &sk).unwrap();
        let h = header_of(&jws);
        let good = sig_of(&jws);
        let point: [u8; P256_POINT_LEN] = sk.p256_point().unwrap();
        let mut variants: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("63 bytes", good[..63].to_vec()),
            ("65 bytes", [good.as_slice(), &[0]].concat()),
            ("leading zero", [&[0], good.as_slice()].concat()),
            ("r only", good[..32].to_vec()),
            ("128 bytes", [good.as_slice(), good.as_slice()].concat()),
            ("r = 0", [&[0u8; 32][..], &good[32..]].concat()),
            ("s = 0", [&good[..32], &[0u8; 32][..]].concat()),
            ("all ones", vec![0xff; 64]),
        ];
        let mut swapped = good[32..].to_vec();
        swapped.extend_from_slice(&good[..32]);
        variants.push(("s || r", swapped));
        for (what, sig) in variants {
            let protected = jws.split('.').next().unwrap();
            let bad = format!("{protected}..{}", b64e(&sig));
            assert!(
                is(
                    verify(&bad, b"header", std::slice::from_ref(&pk)),
                    SignatureFailure::Invalid
                ),
                "{what}"
            );
            assert!(
                is(verify(&bad, b"header", &[]), SignatureFailure::Invalid),
                "{what}"
            );
        }
        // A DER (ASN.1) ECDSA signature by the right key is not JWS ES256.
        let der = forge(&h, b"header", |i| {
            let rng = SystemRandom::new();
            EcdsaKeyPair::from_private_key_and_public_key(
                &ECDSA_P256_SHA256_ASN1_SIGNING,
                sk.secret().unwrap().expose(),
                &point,
                &rng,
            )
            .unwrap()
            .sign(&rng, i)
            .unwrap()
            .as_ref()
            .to_vec()
        });
        assert_ne!(sig_of(&der).len(), 64);
        assert!(is(
            verify(&der, b"header", std::slice::from_ref(&pk)),
            SignatureFailure::Invalid
        ));
    }

    /// FORMAT.md §7: the protected header is strict. A `jwk` holding a
    /// private member, a repeated member, a missing `kid` or a `jwk` of
    /// another type all make the signature invalid, even when a trusted
    /// key verifies the signature bytes.
    #[test]
    fn protected_header_is_strict() {
        for kind in [KeyKind::Ed25519, KeyKind::P256] {
            let sk = Jwk::generate(kind).unwrap();
            let pk = sk.public().unwrap();
            let raw = |k: &Jwk, i: &[u8]| match kind {
                KeyKind::P256 => es256_raw(k, i),
                _ => ed25519_raw(k, i),
            };
            let h = header_of(&sign(b"header", &sk).unwrap());
            assert!(h["jwk"].get("d").is_none(), "the writer never publishes d");
            let ok = forge(&h, b"header", |i| raw(&sk, i));
            assert!(verify(&ok, b"header", std::slice::from_ref(&pk)).is_ok());
            let private: serde_json::Value =
                serde_json::from_str(&sk.to_json(true).unwrap()).unwrap();
            let mut with_d = h.clone();
            with_d["jwk"] = private;
            let mut no_kid = h.clone();
            no_kid.as_object_mut().unwrap().remove("kid");
            let mut kid_number = h.clone();
            kid_number["kid"] = 7.into();
            let mut other_type = h.clone();
            let other = Jwk::generate(match kind {
                KeyKind::P256 => KeyKind::Ed25519,
                _ => KeyKind::P256,
            })
            .unwrap();
            other_type["jwk"] =
                serde_json::from_str(&other.public().unwrap().to_json(false).unwrap()).unwrap();
            let mut k_member = h.clone();
            k_member["jwk"]["k"] = "AAAA".into();
            for (what, bad) in [
                ("jwk with d", forge(&with_d, b"header", |i| raw(&sk, i))),
                ("jwk with k", forge(&k_member, b"header", |i| raw(&sk, i))),
                ("no kid", forge(&no_kid, b"header", |i| raw(&sk, i))),
                (
                    "numeric kid",
                    forge(&kid_number, b"header", |i| raw(&sk, i)),
                ),
                (
                    "jwk of another type",
                    forge(&other_type, b"header", |i| raw(&sk, i)),
                ),
            ] {
                for trusted in [vec![], vec![pk.clone()]] {
                    assert!(
                        is(verify(&bad, b"header", &trusted), SignatureFailure::Invalid),
                        "{what}"
                    );
                }
            }
            // A repeated member: serde_json's Value cannot hold one, so the
            // text is edited ("alg" twice, same value).
            let text = h.to_string();
            let alg = format!(r#""alg":{}"#, h["alg"]);
            let twice = text.replacen(&alg, &format!("{alg},{alg}"), 1);
            assert_ne!(twice, text);
            let protected = b64e(twice.as_bytes());
            let input = signing_input(&protected, b"header");
            let dup = format!("{protected}..{}", b64e(&raw(&sk, input.as_bytes())));
            assert!(is(
                verify(&dup, b"header", std::slice::from_ref(&pk)),
                SignatureFailure::Invalid
            ));
            let jwk_twice = text.replacen(r#""kty""#, r#""kty":"x","kty""#, 1);
            let protected = b64e(jwk_twice.as_bytes());
            let input = signing_input(&protected, b"header");
            let dup = format!("{protected}..{}", b64e(&raw(&sk, input.as_bytes())));
            assert!(is(
                verify(&dup, b"header", std::slice::from_ref(&pk)),
                SignatureFailure::Invalid
            ));
        }
    }

    /// FORMAT.md §7: ES256 signatures with a high S (s > n/2) are accepted,
    /// like their low-S twin (r, n - s): a detached signature over a
    /// canonical header gains nothing from non-malleability.
    #[test]
    fn es256_high_and_low_s_both_verify() {
        const N: [u8; 32] = [
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2,
            0xfc, 0x63, 0x25, 0x51,
        ];
        let sk = Jwk::generate(KeyKind::P256).unwrap();
        let pk = sk.public().unwrap();
        let jws = sign(b"header", &sk).unwrap();
        let sig = sig_of(&jws);
        let mut twin = sig.clone();
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = N[i] as i16 - sig[32 + i] as i16 - borrow;
            twin[32 + i] = d.rem_euclid(256) as u8;
            borrow = i16::from(d < 0);
        }
        assert_ne!(twin, sig);
        let protected = jws.split('.').next().unwrap();
        let twin = format!("{protected}..{}", b64e(&twin));
        for j in [&jws, &twin] {
            assert!(verify(j, b"header", std::slice::from_ref(&pk)).is_ok());
        }
    }

    #[test]
    fn rfc8037_a4_signature() {
        // RFC 8037 A.4: Ed25519 signature of the payload "Example of Ed25519 signing".
        let sk = Jwk::parse(
            r#"{"kty":"OKP","crv":"Ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
        )
        .unwrap();
        let pair = Ed25519KeyPair::from_seed_and_public_key(
            sk.secret().unwrap().expose(),
            sk.public_bytes(),
        )
        .unwrap();
        let sig = pair.sign(b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc");
        assert_eq!(
            b64e(sig.as_ref()),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }
}
