//! Every vector in tests/vectors opens as its JSON says, with the exact
//! error kind of FORMAT.md §10 (the core's variant, so `format` and
//! `unsupported` are told apart).

use std::path::PathBuf;
use std::sync::Arc;

use cryptotensors::keys::Jwk;
use cryptotensors::reader::{LoadOptions, Reader};
use cryptotensors::Error;
use ring::digest;

fn kind(e: &Error) -> &'static str {
    match e {
        Error::Unsupported(_) => "unsupported",
        Error::Integrity | Error::EncryptionRequired => "integrity",
        Error::KeyNotFound { .. } => "key_not_found",
        Error::Signature(_) => "signature",
        Error::PolicyDenied(_) => "policy_denied",
        Error::InvalidKey(_) => "invalid_key",
        _ => "format",
    }
}

fn keys(v: &serde_json::Value) -> Vec<Jwk> {
    Jwk::parse_set(&v["keys"].to_string()).expect("vector keys parse")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn every_vector_has_its_outcome() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        seen += 1;
        let spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(path.with_extension("safetensors")).unwrap();
        let opts = LoadOptions {
            keys: keys(&spec["keys"]),
            trusted_signers: keys(&spec["trusted_signers"]),
            ..Default::default()
        };
        let expect = spec["expect"].as_str().unwrap();
        let result = Reader::open(Arc::new(bytes), &opts).and_then(|r| {
            for (t, want) in spec["tensors"].as_object().unwrap() {
                let mut out = vec![0u8; r.header().tensor(t)?.len()];
                r.read_into(t, &mut out)?;
                let got = hex(digest::digest(&digest::SHA256, &out).as_ref());
                assert_eq!(got, want["sha256"].as_str().unwrap(), "{name}: {t}");
            }
            Ok(())
        });
        match (expect, result) {
            ("ok", Ok(())) => {}
            ("ok", Err(e)) => panic!("{name}: expected ok, got {e}"),
            (want, Ok(())) => panic!("{name}: expected {want}, but it opened"),
            (want, Err(e)) => assert_eq!(kind(&e), want, "{name}: {e}"),
        }
    }
    assert!(seen >= 25, "only {seen} vectors found");
}

#[test]
fn a_trusted_signer_that_cannot_sign_is_an_invalid_key() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors");
    let bytes = std::fs::read(dir.join("plain.safetensors")).unwrap();
    for kind in ["oct", "X25519"] {
        let k = Jwk::generate(cryptotensors::keys::KeyKind::parse(kind).unwrap()).unwrap();
        let opts = LoadOptions {
            trusted_signers: vec![k],
            ..Default::default()
        };
        let e = Reader::open(Arc::new(bytes.clone()), &opts).unwrap_err();
        assert!(matches!(e, Error::InvalidKey(_)), "{kind}: {e}");
    }
    // A signing key among the decryption keys matches nothing, and is fine.
    let ed = Jwk::generate(cryptotensors::keys::KeyKind::Ed25519).unwrap();
    let opts = LoadOptions {
        keys: vec![ed],
        ..Default::default()
    };
    assert!(Reader::open(Arc::new(bytes), &opts).is_ok());
}
