//! `decrypt`: tampering with valid protected files.
//!
//! Six fixture files are written once per process with `writer::serialize`
//! (see `fuzz_common::Kind`): encrypted (AES-256-GCM, ChaCha20-Poly1305,
//! partial), encrypted and signed, signed only, two recipients, and plain.
//! The input is a small program of edits applied to one of them:
//!
//! ```text
//! byte 0: fixture (bits 0..2, mod 6); trusted signer (bit 3); keys
//!         (bits 4..5: oct, X25519 public only, wrong keys + oct,
//!         X25519 private); require_encryption (bit 6); cache (bit 7)
//! then ops until the input ends, op = byte % 10:
//!   0 xor      pos:u16 val:u8            file[pos] ^= val (val 0 → 1)
//!   1 set      pos:u16 val:u8            file[pos] = val
//!   2 insert   pos:u16 n:u8 bytes[n%32]  insert raw bytes
//!   3 delete   pos:u16 n:u8              remove n%64+1 bytes
//!   4 copy     src:u16 dst:u16 n:u8      overwrite dst with src (n%64+1)
//!   5 swap     a:u16 b:u16 n:u8          swap two ranges (n%64+1)
//!   6 resize   n:u16                     truncate or zero-extend
//!   7 jxor     pos:u16 val:u8            xor inside the header JSON
//!   8 jsplice  pos:u16 del:u8 n:u8 bytes insert/delete inside the JSON,
//!                                        the length prefix fixed up
//!   9 json     sub:u8 a:u8 b:u8          a structural header rewrite
//!                                        (swap offsets, names; dtypes,
//!                                        shapes; envelope fields ...),
//!                                        re-serialized with a fixed prefix
//! ```
//!
//! Positions are taken modulo the current length. The mutated file is
//! opened with `Reader::open` and every tensor read with `read_into`; with
//! the open cache selected (bit 7), it is first opened once by a loader
//! holding the private keys, so the second open runs on a warm cache.
//! Never panic; inspection of every mutated file never panics either, and
//! agrees with the reader (undamaged, same protection) on every file that
//! opens; and for the protected fixtures, if the file opens and every
//! read succeeds, the header (tensors, metadata) and every tensor's bytes
//! must equal the original's: no garbage is ever returned. The one
//! accepted difference is a stripped signature on an encrypted file read
//! without trusted signers (the MAC does not cover the signature; FORMAT.md
//! §7 makes signatures matter only with trusted signers).
#![no_main]

use std::sync::OnceLock;

use cryptotensors::envelope::SIGNATURE_KEY;
use cryptotensors::header::PREFIX_LEN;
use cryptotensors::inspect::{FileProtection, Inspection};
use cryptotensors::keys::Jwk;
use cryptotensors::reader::LoadOptions;
use fuzz_common::{
    fixtures, key, open_and_read, signer_public, without_signature, Bytes, Kind, OCT_KEY,
    OTHER_OCT_KEY, WRONG_OCT_KEY, X25519_KEY,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

struct Keys {
    right: Vec<Jwk>,
    with_others: Vec<Jwk>,
    x25519_only: Vec<Jwk>,
    x25519_public: Vec<Jwk>,
    trusted: Vec<Jwk>,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys {
        right: vec![key(OCT_KEY)],
        with_others: vec![key(OTHER_OCT_KEY), key(WRONG_OCT_KEY), key(OCT_KEY)],
        x25519_only: vec![key(X25519_KEY)],
        x25519_public: vec![key(X25519_KEY).public().expect("public")],
        trusted: vec![signer_public()],
    })
}

/// The header's JSON range, when the prefix is sane.
fn json_range(f: &[u8]) -> Option<(usize, usize)> {
    let n = u64::from_le_bytes(f.get(..PREFIX_LEN)?.try_into().ok()?);
    let n = usize::try_from(n).ok()?;
    let end = PREFIX_LEN.checked_add(n)?;
    (end <= f.len()).then_some((PREFIX_LEN, end))
}

/// Replaces the header JSON with `json`, fixing the length prefix.
fn replace_json(f: &mut Vec<u8>, json: &[u8]) {
    let Some((s, e)) = json_range(f) else {
        return;
    };
    let mut out = Vec::with_capacity(f.len() + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json);
    out.extend_from_slice(&f[e..]);
    let _ = s;
    *f = out;
}

fn at(pos: u16, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        pos as usize % len
    }
}

/// Tensor entry names of a header object (not `__metadata__`).
fn tensor_keys(o: &serde_json::Map<String, Value>) -> Vec<String> {
    o.keys().filter(|k| *k != "__metadata__").cloned().collect()
}

/// A structural rewrite of the header, as an attacker with a JSON editor
/// would make. Returns None when it does not apply.
fn json_edit(f: &mut Vec<u8>, sub: u8, a: u8, b: u8) -> Option<()> {
    let (s, e) = json_range(f)?;
    let mut v: Value = serde_json::from_slice(&f[s..e]).ok()?;
    let o = v.as_object_mut()?;
    let names = tensor_keys(o);
    // The edits below index entries as objects (serde_json panics on a
    // mutable index into anything else); earlier edits may have broken that.
    if names.iter().any(|n| !o[n].is_object()) {
        return None;
    }
    let pick = |i: u8| names.get(i as usize % names.len().max(1)).cloned();
    const DTYPES: [&str; 8] = ["F32", "I32", "U32", "U8", "BF16", "F16", "I64", "F4"];
    match sub % 16 {
        // Swap the data_offsets of two tensors.
        0 => {
            let (x, y) = (pick(a)?, pick(b)?);
            let ox = o[&x]["data_offsets"].take();
            let oy = std::mem::replace(&mut o.get_mut(&y)?["data_offsets"], ox);
            o.get_mut(&x)?["data_offsets"] = oy;
        }
        // Swap two tensors' names (their entries).
        1 => {
            let (x, y) = (pick(a)?, pick(b)?);
            let ex = o.remove(&x)?;
            let ey = o.insert(y.clone(), ex)?;
            o.insert(x, ey);
        }
        // Change a dtype.
        2 => {
            let x = pick(a)?;
            o.get_mut(&x)?["dtype"] = DTYPES[b as usize % DTYPES.len()].into();
        }
        // Reshape: reverse, flatten, or add a unit dimension.
        3 => {
            let x = pick(a)?;
            let shape = o.get_mut(&x)?.get_mut("shape")?.as_array_mut()?;
            match b % 3 {
                0 => shape.reverse(),
                1 => {
                    let n: u64 = shape.iter().filter_map(Value::as_u64).product();
                    *shape = vec![n.into()];
                }
                _ => shape.push(1.into()),
            }
        }
        // Rename a tensor.
        4 => {
            let x = pick(a)?;
            let ex = o.remove(&x)?;
            o.insert(format!("{x}{}", (b'a' + b % 26) as char), ex);
        }
        // Shift a tensor's offsets.
        5 => {
            let x = pick(a)?;
            let off = o.get_mut(&x)?.get_mut("data_offsets")?.as_array_mut()?;
            for v in off.iter_mut() {
                let n = v.as_u64()?;
                *v = (n as i64 + (b as i8) as i64).max(0).into();
            }
        }
        // Drop a metadata entry.
        6 => {
            let m = o.get_mut("__metadata__")?.as_object_mut()?;
            let k = m.keys().nth(a as usize % m.len().max(1))?.clone();
            m.remove(&k);
        }
        // Add or overwrite a user metadata entry.
        7 => {
            let m = o.get_mut("__metadata__")?.as_object_mut()?;
            m.insert(format!("k{}", a % 4), format!("v{b}").into());
        }
        // Drop a tensor.
        8 => {
            let x = pick(a)?;
            o.remove(&x);
        }
        // Envelope edits.
        _ => {
            let m = o.get_mut("__metadata__")?.as_object_mut()?;
            let env_v = m.get_mut("__cryptotensors__")?;
            let mut env: Value = serde_json::from_str(env_v.as_str()?).ok()?;
            let eo = env.as_object_mut()?;
            match sub % 16 {
                9 => {
                    eo.insert("segment_size".into(), (4096u64 << (a % 5)).into());
                }
                10 => {
                    let enc = eo.get_mut("encryption")?.as_object_mut()?;
                    let alg = enc.get_mut("algorithm")?;
                    *alg = if alg == "AES-256-GCM" {
                        "ChaCha20-Poly1305".into()
                    } else {
                        "AES-256-GCM".into()
                    };
                }
                11 => {
                    // Remove an encrypted tensor from the list.
                    let enc = eo.get_mut("encryption")?.as_object_mut()?;
                    let t = enc.get_mut("tensors")?.as_array_mut()?;
                    if !t.is_empty() {
                        let i = a as usize % t.len();
                        t.remove(i);
                    }
                }
                12 => {
                    // Mark another tensor encrypted (kept sorted).
                    let x = pick(a)?;
                    let enc = eo.get_mut("encryption")?.as_object_mut()?;
                    let t = enc.get_mut("tensors")?.as_array_mut()?;
                    let mut names: Vec<String> = t
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect();
                    names.push(x);
                    names.sort();
                    names.dedup();
                    *t = names.into_iter().map(Value::from).collect();
                }
                13 => {
                    // Reorder, duplicate or drop recipients.
                    let enc = eo.get_mut("encryption")?.as_object_mut()?;
                    let r = enc.get_mut("recipients")?.as_array_mut()?;
                    match b % 3 {
                        0 => r.reverse(),
                        1 => {
                            let c = r.first()?.clone();
                            r.push(c);
                        }
                        _ => {
                            r.pop();
                        }
                    }
                }
                14 => {
                    // Drop the encryption section (strip encryption).
                    eo.remove("encryption");
                }
                _ => {
                    // Edit the trailer length.
                    let n = eo.get("trailer_length")?.as_u64()?;
                    eo.insert(
                        "trailer_length".into(),
                        (n as i64 + (b as i8) as i64).max(0).into(),
                    );
                }
            }
            *env_v = Value::String(serde_json::to_string(&env).ok()?);
        }
    }
    let json = serde_json::to_vec(&v).ok()?;
    replace_json(f, &json);
    Some(())
}

fn mutate(f: &mut Vec<u8>, p: &mut Bytes) {
    let mut ops = 0;
    while !p.is_empty() && ops < 16 {
        ops += 1;
        let len = f.len();
        match p.u8() % 10 {
            0 => {
                let (i, v) = (at(p.u16(), len), p.u8());
                if let Some(b) = f.get_mut(i) {
                    *b ^= v.max(1);
                }
            }
            1 => {
                let (i, v) = (at(p.u16(), len), p.u8());
                if let Some(b) = f.get_mut(i) {
                    *b = v;
                }
            }
            2 => {
                let i = at(p.u16(), len + 1);
                let n = p.u8() as usize % 32;
                let bytes = p.take(n).to_vec();
                f.splice(i..i, bytes);
            }
            3 => {
                let i = at(p.u16(), len);
                let n = p.u8() as usize % 64 + 1;
                f.drain(i..(i + n).min(len));
            }
            4 => {
                let (s, d, n) = (at(p.u16(), len), at(p.u16(), len), p.u8() as usize % 64 + 1);
                let n = n.min(len - s.max(d));
                f.copy_within(s..s + n, d);
            }
            5 => {
                let (a, b, n) = (at(p.u16(), len), at(p.u16(), len), p.u8() as usize % 64 + 1);
                let (a, b) = (a.min(b), a.max(b));
                let n = n.min(b - a).min(len - b);
                let tmp = f[a..a + n].to_vec();
                f.copy_within(b..b + n, a);
                f[b..b + n].copy_from_slice(&tmp);
            }
            6 => {
                let n = p.u16() as usize % (len + 64);
                f.resize(n, 0);
            }
            7 => {
                let (i, v) = (p.u16(), p.u8());
                if let Some((s, e)) = json_range(f) {
                    if e > s {
                        f[s + at(i, e - s)] ^= v.max(1);
                    }
                }
            }
            8 => {
                let (i, del, n) = (p.u16(), p.u8() as usize % 16, p.u8() as usize % 16);
                let bytes = p.take(n).to_vec();
                if let Some((s, e)) = json_range(f) {
                    let mut json = f[s..e].to_vec();
                    let i = at(i, json.len() + 1);
                    let d = del.min(json.len() - i);
                    json.splice(i..i + d, bytes);
                    replace_json(f, &json);
                }
            }
            _ => {
                let (sub, a, b) = (p.u8(), p.u8(), p.u8());
                let _ = json_edit(f, sub, a, b);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut p = Bytes::new(data);
    let sel = p.u8();
    let fx = &fixtures()[(sel & 7) as usize % fixtures().len()];
    let k = keys();
    let trusted = sel & 0x08 != 0;
    let key_set = (sel >> 4) & 3;
    let opts = LoadOptions {
        keys: match key_set {
            0 => k.right.clone(),
            1 => k.x25519_public.clone(),
            2 => k.with_others.clone(),
            _ => k.x25519_only.clone(),
        },
        trusted_signers: if trusted { k.trusted.clone() } else { vec![] },
        require_encryption: sel & 0x40 != 0,
        cache: sel & 0x80 != 0,
        ..LoadOptions::default()
    };
    // Whether the loader holds a secret that opens the original file.
    let can_decrypt = match fx.kind {
        Kind::SignedOnly | Kind::Plain => true,
        Kind::AesTwoRecipients => key_set != 1,
        _ => key_set == 0 || key_set == 2,
    };
    let mut file = fx.bytes.clone();
    mutate(&mut file, &mut p);
    let unchanged = file == fx.bytes;
    if opts.cache {
        // With the verified-header cache on, first open the same bytes as
        // a loader holding the private counterparts of the keys would, so
        // that each input carries its own cache state: the open below then
        // hits the cache (same key ids and thumbprints) and must still
        // give the same answer as a cold open.
        let warm = LoadOptions {
            keys: if key_set == 1 {
                k.x25519_only.clone()
            } else {
                opts.keys.clone()
            },
            ..opts.clone()
        };
        let _ = open_and_read(file.clone(), &warm);
    }
    // Inspection never panics on any of these files, and agrees with the
    // reader on every file that opens: not damaged, and the protection the
    // reader found.
    let inspection = Inspection::read(&file);
    let result = open_and_read(file, &opts);
    if let Ok((reader, _)) = &result {
        let i = inspection.expect("a file that opens can be inspected");
        assert!(
            i.damage().is_none(),
            "a file that opens is damaged: {:?}",
            i.damage()
        );
        let want = match reader.layout() {
            Some(l) if l.encryption.is_some() => FileProtection::Encrypted,
            Some(_) => FileProtection::Signed,
            None => FileProtection::Plain,
        };
        assert_eq!(i.protection(), want, "inspection of a {:?} file", fx.kind);
    }
    if fx.kind == Kind::Plain {
        return;
    }
    let Ok((reader, tensors)) = result else {
        // A failure is the right answer to tampering; for the untouched
        // file it is only right when the options make it so.
        if unchanged && !trusted && !opts.require_encryption && can_decrypt {
            panic!(
                "the untouched {:?} fixture fails: {:?}",
                fx.kind,
                result.err()
            );
        }
        return;
    };
    // It opened and every tensor read: it must be the original, and the
    // loader must have held a key for it.
    let h = reader.header();
    if reader.layout().is_some_and(|l| l.encryption.is_some()) {
        assert!(
            can_decrypt,
            "a {:?} file opened without its secret key (cache: {})",
            fx.kind, opts.cache
        );
    }
    assert_eq!(
        h.tensors(),
        fx.header.tensors(),
        "tensor table of a tampered {:?} file",
        fx.kind
    );
    let stripped = h.metadata_value(SIGNATURE_KEY).is_none()
        && fx.header.metadata_value(SIGNATURE_KEY).is_some();
    if stripped {
        assert!(!trusted, "a stripped signature passes trusted signers");
        assert!(reader
            .layout()
            .and_then(|l| l.encryption.as_ref())
            .is_some());
        assert_eq!(
            without_signature(h.metadata()),
            without_signature(fx.header.metadata()),
            "metadata of a tampered {:?} file",
            fx.kind
        );
    } else {
        assert_eq!(
            h.metadata(),
            fx.header.metadata(),
            "metadata of a tampered {:?} file",
            fx.kind
        );
    }
    if trusted {
        assert_eq!(reader.signer(), Some(k.trusted[0].kid()));
    }
    assert_eq!(tensors.len(), fx.tensors.len());
    for (name, _, bytes) in &tensors {
        let want = fx.plaintext(name).expect("known tensor");
        assert!(
            bytes == &want.data,
            "tensor {name:?} of a tampered {:?} file reads garbage",
            fx.kind
        );
    }
});
