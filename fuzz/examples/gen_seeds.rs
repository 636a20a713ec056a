//! Writes the seed corpus under `fuzz/seeds/` (committed; re-run after a
//! format change): `cargo run --example gen_seeds` from `fuzz/` (no
//! fuzzing flags needed). Encrypted files differ at every run (random data
//! keys); their structure, which is what seeds are for, does not.

use std::fs;
use std::path::Path;

use cryptotensors::envelope::ENVELOPE_KEY;
use cryptotensors::header::PREFIX_LEN;
use cryptotensors::sign;
use fuzz_common::{fixtures, key, Kind, ED25519_KEY, KINDS, OCT_KEY, OTHER_OCT_KEY, X25519_KEY};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let _ = fs::remove_dir_all(&root);
    for (i, f) in fixtures().iter().enumerate() {
        let n = u64::from_le_bytes(f.bytes[..8].try_into().unwrap()) as usize;
        let json = &f.bytes[PREFIX_LEN..PREFIX_LEN + n];
        // header: whole small files, and bare JSON.
        if matches!(f.kind, Kind::Plain | Kind::SignedOnly | Kind::AesAll) {
            write(
                &root.join("header"),
                &format!("file-{:?}", f.kind),
                &f.bytes,
            );
        }
        write(&root.join("header"), &format!("json-{:?}", f.kind), json);
        // envelope: mode 0 (header JSON), mode 1 (envelope JSON).
        let mut m0 = vec![0u8];
        m0.extend_from_slice(json);
        write(&root.join("envelope"), &format!("header-{:?}", f.kind), &m0);
        if let Some(env) = f.header.metadata_value(ENVELOPE_KEY) {
            let mut m1 = vec![1u8 | 0x10];
            m1.extend_from_slice(env.as_bytes());
            write(
                &root.join("envelope"),
                &format!("envelope-{:?}", f.kind),
                &m1,
            );
        }
        // decrypt: the untouched file under each option set, and one
        // structural edit of each kind.
        for opt in [0u8, 0x08, 0x20, 0x30, 0x80] {
            write(
                &root.join("decrypt"),
                &format!("plain-{i}-{opt:02x}"),
                &[i as u8 | opt],
            );
        }
        for sub in 0..16u8 {
            write(
                &root.join("decrypt"),
                &format!("json-{i}-{sub}"),
                &[i as u8, 9, sub, 1, 2],
            );
        }
        write(
            &root.join("decrypt"),
            &format!("xor-{i}"),
            &[i as u8, 0, 0x10, 0x00, 0x01],
        );
    }
    assert_eq!(fixtures().len(), KINDS.len());
    for (name, k) in [
        ("oct", OCT_KEY),
        ("other", OTHER_OCT_KEY),
        ("x25519", X25519_KEY),
        ("ed25519", ED25519_KEY),
    ] {
        let mut m2 = vec![2u8];
        m2.extend_from_slice(k.as_bytes());
        write(&root.join("envelope"), &format!("jwk-{name}"), &m2);
    }
    let set = format!(r#"{{"keys":[{OCT_KEY},{X25519_KEY}]}}"#);
    write(
        &root.join("envelope"),
        "jwks",
        &[&[2u8][..], set.as_bytes()].concat(),
    );
    let jws = sign::sign(b"cryptotensors fuzz payload", &key(ED25519_KEY)).unwrap();
    write(
        &root.join("envelope"),
        "jws",
        &[&[3u8][..], jws.as_bytes()].concat(),
    );
    // Regression inputs of the bugs fuzzing found (tests/FUZZING.md): they
    // fail until the bugs are fixed. The X25519-public-key open on a warm
    // cache, and two empty tensors whose dtype order differs from their
    // name order, encrypted.
    write(
        &root.join("decrypt"),
        "regress-open-cache-public-key",
        &[0x94],
    );
    write(
        &root.join("roundtrip"),
        "regress-empty-tensor-trailer-order",
        &[
            0x0f, 0xf5, 0xf5, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x37, 0xb5, 0x5a, 0x32, 0x00, 0xff,
            0xff, 0x00, 0x00, 0xff, 0x29, 0x90, 0x29, 0x90, 0x72, 0xf5, 0xc5, 0x32, 0x03, 0x04,
            0x02, 0x62, 0x35, 0x01, 0x35, 0x04, 0x05, 0x03, 0x01, 0x0e, 0xff, 0xf5,
        ],
    );
    // roundtrip and slice: arbitrary-encoded inputs; a few plausible byte
    // strings are enough to start from.
    write(&root.join("slice"), "f32-2x3", &[17, 2, 2, 3, 1, 2, 0, 1]);
    write(
        &root.join("roundtrip"),
        "two",
        b"\x01a\x05\x02\x03\x04\x01b\x10\x01\x07\x00\x00\x03\x00\x00",
    );
}
