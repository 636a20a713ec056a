//! Header signatures: a JWS (RFC 7515) with detached payload, `EdDSA` over
//! Ed25519 (RFC 8037). The payload is the canonical header. See FORMAT.md §7.
//!
//! Trust comes only from the loader's list of public keys. The `jwk` in the
//! protected header is a hint used to tell "untrusted signer" from "broken
//! signature"; it never makes a file trusted.

use ring::signature::{self, Ed25519KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, SignatureFailure};
use crate::keys::{b64d, b64e, Jwk, KeyKind, ALG_EDDSA};

/// The JWS protected header. Unknown members (`crit`, `b64`, ...) are
/// rejected: they could change what the signature means.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Protected {
    alg: String,
    kid: String,
    jwk: serde_json::Value,
}

/// Signs `payload` with an Ed25519 private JWK; returns the compact JWS
/// with its payload detached (`protected..signature`).
pub fn sign(payload: &[u8], key: &Jwk) -> Result<String> {
    if key.kind() != KeyKind::Ed25519 {
        return Err(Error::InvalidKey(
            "signing needs an Ed25519 (OKP) key".into(),
        ));
    }
    let seed = key
        .secret()
        .ok_or_else(|| Error::InvalidKey("signing needs the private key (\"d\")".into()))?;
    let pair = Ed25519KeyPair::from_seed_and_public_key(seed.expose(), key.public_bytes())
        .map_err(|_| Error::InvalidKey("Ed25519 key pair is inconsistent".into()))?;
    let public: serde_json::Value =
        serde_json::from_str(&key.public()?.to_json(false)?).expect("JSON");
    let protected = Protected {
        alg: ALG_EDDSA.into(),
        kid: key.kid().into(),
        jwk: public,
    };
    let protected = b64e(serde_json::to_string(&protected).expect("JSON").as_bytes());
    let input = signing_input(&protected, payload);
    let sig = pair.sign(input.as_bytes());
    Ok(format!("{protected}..{}", b64e(sig.as_ref())))
}

fn signing_input(protected: &str, payload: &[u8]) -> String {
    format!("{protected}.{}", b64e(payload))
}

/// The signer named by a signature, unverified: for display only.
pub fn signer_hint(jws: &str) -> Option<String> {
    let protected = jws.split('.').next()?;
    let p: Protected = serde_json::from_slice(&b64d("protected", protected).ok()?).ok()?;
    Some(p.kid)
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
    let header: Protected = b64d("protected", protected)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(Error::Signature(SignatureFailure::Invalid))?;
    if header.alg != ALG_EDDSA {
        return Err(invalid);
    }
    let sig = b64d("signature", sig).map_err(|_| Error::Signature(SignatureFailure::Invalid))?;
    let input = signing_input(protected, payload);
    let check = |k: &Jwk| {
        k.kind() == KeyKind::Ed25519
            && UnparsedPublicKey::new(&signature::ED25519, k.public_bytes())
                .verify(input.as_bytes(), &sig)
                .is_ok()
    };
    if let Some(k) = trusted.iter().find(|k| check(k)) {
        return Ok(k.kid().to_owned());
    }
    let hinted = Jwk::parse(&header.jwk.to_string())
        .ok()
        .filter(|k| check(k));
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
