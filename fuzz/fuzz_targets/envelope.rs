//! `envelope`: the crypto metadata, keys and signatures on arbitrary text.
//!
//! The first input byte picks a mode, the rest is the text:
//! - 0: a whole header's JSON → `Header::parse` → `Layout::from_header`;
//! - 1: an envelope's JSON, put in `__metadata__["__cryptotensors__"]` of a
//!   fixed header (the fixture tensors; MAC and signature entries per the
//!   selector's bits) → `Layout::from_header`;
//! - 2: `Jwk::parse_set` and `Jwk::parse`; a parsed key must survive its own
//!   JSON export;
//! - 3: `sign::verify` of the text as a JWS over a fixed payload; with the
//!   real signer trusted, only the real signature may verify.
//!
//! A layout that validates has its recipients unwrapped with the fixed keys.
#![no_main]

use std::sync::OnceLock;

use cryptotensors::envelope::{self, Layout, ENVELOPE_KEY, MAC_KEY, SIGNATURE_KEY};
use cryptotensors::header::{Header, Metadata};
use cryptotensors::keys::{self, Jwk};
use cryptotensors::sign;
use fuzz_common::{check_header, fixtures, key, signer_public, ED25519_KEY, OCT_KEY, X25519_KEY};
use libfuzzer_sys::fuzz_target;

struct Fixed {
    keys: Vec<Jwk>,
    trusted: Vec<Jwk>,
    payload: Vec<u8>,
    jws: String,
    header: Header,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let payload = b"cryptotensors fuzz payload".to_vec();
        let sk = key(ED25519_KEY);
        Fixed {
            keys: vec![key(OCT_KEY), key(X25519_KEY), sk.clone()],
            trusted: vec![signer_public()],
            jws: sign::sign(&payload, &sk).expect("sign"),
            payload,
            header: fixtures()[0].header.clone(),
        }
    })
}

fn layout(h: &Header) {
    let f = fixed();
    let Ok(Some(l)) = Layout::from_header(h) else {
        return;
    };
    assert_eq!(l.entries.len(), h.tensors().len());
    assert!(l.envelope.segment_size.is_power_of_two());
    assert_eq!(l.trailer_len as u64, l.envelope.trailer_length);
    let mut prev = 0;
    for (i, &(_, off)) in l.entries.iter().enumerate() {
        assert!(i == 0 || off >= prev);
        assert!(off <= l.trailer_len);
        prev = off;
    }
    for r in l.recipients() {
        for k in &f.keys {
            let _ = keys::unwrap(r, k);
        }
    }
    if let Some(jws) = h.metadata_value(SIGNATURE_KEY) {
        let input = envelope::signature_input(h);
        let _ = sign::verify(jws, &input, &[]);
        let _ = sign::verify(jws, &input, &f.trusted);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let f = fixed();
    match mode % 4 {
        0 => {
            if let Ok(h) = Header::parse(rest) {
                check_header(&h);
                layout(&h);
            }
        }
        1 => {
            let mut meta: Metadata = f.header.metadata().cloned().unwrap_or_default();
            meta.insert(ENVELOPE_KEY.into(), text.into_owned());
            if mode & 0x10 == 0 {
                meta.remove(MAC_KEY);
            }
            if mode & 0x20 != 0 {
                meta.insert(SIGNATURE_KEY.into(), f.jws.clone());
            }
            if mode & 0x40 != 0 {
                meta.insert("__cryptotensors_extra__".into(), String::new());
            }
            let h = Header::from_parts(Some(meta), f.header.tensors().to_vec())
                .expect("fixture tensors tile");
            layout(&h);
        }
        2 => {
            if let Ok(set) = Jwk::parse_set(&text) {
                for k in &set {
                    for private in [false, true] {
                        if let Ok(json) = k.to_json(private) {
                            let k2 = Jwk::parse(&json).expect("exported key parses");
                            assert_eq!(k2.kid(), k.kid());
                            assert_eq!(k2.thumbprint(), k.thumbprint());
                            assert_eq!(k2.kind(), k.kind());
                            assert_eq!(k2.public_bytes(), k.public_bytes());
                            assert_eq!(k2.is_private(), private && k.is_private());
                        }
                    }
                    if let Ok(p) = k.public() {
                        assert!(!p.is_private());
                        assert_eq!(p.thumbprint(), k.thumbprint());
                    }
                }
            }
            let _ = Jwk::parse(&text);
        }
        _ => {
            let _ = sign::signer_hint(&text);
            let _ = sign::verify(&text, &f.payload, &[]);
            if let Ok(kid) = sign::verify(&text, &f.payload, &f.trusted) {
                assert_eq!(kid, f.trusted[0].kid());
                assert_eq!(text, f.jws, "only the real signature verifies");
            }
        }
    }
});
