//! `roundtrip`: writing arbitrary small tensor lists and reading them back.
//!
//! - plain: `writer::serialize` → `Reader::open` → the same tensors,
//!   metadata and bytes; serializing what was read (and the input in
//!   reverse order) gives byte-identical files (canonical encoding);
//! - protected: encrypted (AES or ChaCha, all or some tensors, 4–16 KiB
//!   segments) and/or signed → opened with the key (and the signer
//!   trusted) → the same bytes, for whole tensors and for a slice, which
//!   must also equal the slice of the plain file.
//!
//! The writer must accept every valid input: names unique, sizes
//! consistent, no reserved metadata key. Invalid inputs must be refused.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arbitrary::Arbitrary;
use cryptotensors::envelope::RESERVED_PREFIX;
use cryptotensors::header::Metadata;
use cryptotensors::reader::{LoadOptions, Reader};
use cryptotensors::slice::{Index, SliceRuns};
use cryptotensors::writer::{self, EncryptOptions, TensorData, WriteOptions};
use cryptotensors::Algorithm;
use cryptotensors::Dtype;
use fuzz_common::{key, pattern, signer_public, user_part, ED25519_KEY, OCT_KEY, X25519_KEY};
use libfuzzer_sys::fuzz_target;

/// At most this many bytes per tensor.
const MAX_TENSOR: usize = 6 << 10;

#[derive(Debug, Arbitrary)]
struct T {
    name: String,
    dtype: u8,
    shape: Vec<u8>,
    seed: u32,
}

#[derive(Debug, Arbitrary)]
struct Input {
    tensors: Vec<T>,
    metadata: Option<Vec<(String, String)>>,
    /// bit 0: encrypt; 1: sign; 2: ChaCha; 3: select tensors by `mask`;
    /// 4: X25519 recipient too; 5,6: segment size shift
    flags: u8,
    mask: u16,
    slice: Vec<(Option<i8>, Option<i8>, u8)>,
}

struct Owned {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn as_data(ts: &[Owned]) -> Vec<TensorData<'_>> {
    ts.iter()
        .map(|t| TensorData {
            name: &t.name,
            dtype: t.dtype,
            shape: &t.shape,
            data: &t.data,
        })
        .collect()
}

fn read_all(r: &Reader) -> Vec<Owned> {
    r.header()
        .tensors()
        .iter()
        .map(|(name, info)| {
            let mut data = vec![0u8; info.len()];
            r.read_into(name, &mut data)
                .unwrap_or_else(|e| panic!("reading {name:?}: {e:?}"));
            Owned {
                name: name.clone(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                data,
            }
        })
        .collect()
}

fn same(read: &[Owned], want: &[Owned]) {
    let a: BTreeMap<&str, (&Dtype, &Vec<usize>, &Vec<u8>)> = read
        .iter()
        .map(|t| (t.name.as_str(), (&t.dtype, &t.shape, &t.data)))
        .collect();
    let b: BTreeMap<&str, (&Dtype, &Vec<usize>, &Vec<u8>)> = want
        .iter()
        .map(|t| (t.name.as_str(), (&t.dtype, &t.shape, &t.data)))
        .collect();
    assert_eq!(a.len(), read.len(), "names are unique");
    assert!(a == b, "tensors read back differ");
}

fuzz_target!(|input: Input| {
    let tensors: Vec<Owned> = input
        .tensors
        .iter()
        .take(8)
        .filter_map(|t| {
            let dtype = Dtype::all()[t.dtype as usize % Dtype::all().len()];
            let shape: Vec<usize> = t.shape.iter().take(4).map(|&d| (d % 40) as usize).collect();
            let n = dtype.byte_size(&shape).ok()?;
            (n <= MAX_TENSOR).then(|| Owned {
                name: t.name.clone(),
                dtype,
                shape,
                data: pattern(t.seed, n),
            })
        })
        .collect();
    let metadata: Option<Metadata> = input
        .metadata
        .as_ref()
        .map(|m| m.iter().take(8).cloned().collect());
    let unique = tensors
        .iter()
        .map(|t| &t.name)
        .collect::<BTreeSet<_>>()
        .len()
        == tensors.len();
    let reserved = metadata
        .as_ref()
        .is_some_and(|m| m.keys().any(|k| k.starts_with(RESERVED_PREFIX)));
    let data = as_data(&tensors);
    let opts = WriteOptions {
        metadata: metadata.clone(),
        ..WriteOptions::default()
    };

    // Plain.
    let plain = writer::serialize(&data, &opts);
    if !unique || reserved {
        assert!(plain.is_err(), "invalid input accepted");
        return;
    }
    let plain = plain.unwrap_or_else(|e| panic!("valid input refused: {e:?}"));
    let r = Reader::open(Arc::new(plain.clone()), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("written plain file does not open: {e:?}"));
    assert!(r.layout().is_none());
    assert_eq!(r.header().metadata(), metadata.as_ref());
    let back = read_all(&r);
    same(&back, &tensors);
    for (name, info) in r.header().tensors() {
        let off = r.raw_offset(name).unwrap().expect("plain") as usize;
        let t = tensors.iter().find(|t| &t.name == name).unwrap();
        assert_eq!(&plain[off..off + info.len()], &t.data[..]);
    }
    let again = writer::serialize(
        &as_data(&back),
        &WriteOptions {
            metadata: r.header().metadata().cloned(),
            ..WriteOptions::default()
        },
    )
    .expect("re-serialize");
    assert!(
        again == plain,
        "re-serializing a read file changes its bytes"
    );
    let mut reversed = as_data(&tensors);
    reversed.reverse();
    assert!(
        writer::serialize(&reversed, &opts).expect("reversed") == plain,
        "the input order changes the bytes"
    );

    // Protected.
    let f = input.flags;
    let (encrypt, sign) = (f & 1 != 0, f & 2 != 0);
    if !encrypt && !sign {
        return;
    }
    let selection: Option<BTreeSet<String>> = (f & 8 != 0).then(|| {
        tensors
            .iter()
            .enumerate()
            .filter(|(i, _)| input.mask >> (i % 16) & 1 != 0)
            .map(|(_, t)| t.name.clone())
            .collect()
    });
    let mut recipients = vec![key(OCT_KEY)];
    if f & 16 != 0 {
        recipients.push(key(X25519_KEY).public().unwrap());
    }
    let popts = WriteOptions {
        metadata: metadata.clone(),
        encrypt: encrypt.then(|| EncryptOptions {
            recipients,
            tensors: selection.clone(),
            algorithm: if f & 4 != 0 {
                Algorithm::ChaCha20Poly1305
            } else {
                Algorithm::Aes256Gcm
            },
            wrappers: Vec::new(),
        }),
        sign_with: sign.then(|| key(ED25519_KEY)),
        segment_size: 4096 << ((f >> 5) % 3),
        reserve: (input.mask as usize) % 64,
        ..WriteOptions::default()
    };
    let selects_none = selection
        .as_ref()
        .map_or(tensors.is_empty(), |s| s.is_empty());
    let sealed = writer::serialize(&data, &popts);
    if encrypt && selects_none {
        assert!(
            sealed.is_err(),
            "an encryption selecting no tensor was accepted"
        );
        return;
    }
    let sealed = sealed.unwrap_or_else(|e| panic!("valid protected input refused: {e:?}"));
    let lopts = LoadOptions {
        keys: if f & 16 != 0 {
            vec![key(X25519_KEY)]
        } else {
            vec![key(OCT_KEY)]
        },
        trusted_signers: if sign { vec![signer_public()] } else { vec![] },
        require_encryption: encrypt,
        ..LoadOptions::default()
    };
    let r2 = Reader::open(Arc::new(sealed), &lopts)
        .unwrap_or_else(|e| panic!("written protected file does not open: {e:?}"));
    assert_eq!(
        user_part(r2.header().metadata()),
        user_part(metadata.as_ref())
    );
    assert_eq!(
        r2.header().tensors(),
        r.header().tensors(),
        "same layout as plain"
    );
    same(&read_all(&r2), &tensors);
    for (name, _) in r2.header().tensors() {
        let want = encrypt && selection.as_ref().is_none_or(|s| s.contains(name));
        assert_eq!(r2.is_encrypted(name), want, "protection of {name:?}");
        assert!(r2.raw_offset(name).unwrap().is_none());
    }
    if sign {
        assert_eq!(r2.signer(), Some(signer_public().kid()));
    }

    // A slice of each tensor: protected and plain agree, and both equal the
    // bytes the runs name.
    let index: Vec<Index> = input
        .slice
        .iter()
        .take(4)
        .map(|&(a, b, s)| Index::Range {
            start: a.map(Into::into),
            stop: b.map(Into::into),
            step: i64::from(s % 5 + 1),
        })
        .collect();
    for t in &tensors {
        let Ok(runs) = SliceRuns::new(t.dtype, &t.shape, &index) else {
            continue;
        };
        let mut want = Vec::with_capacity(runs.len);
        for &(o, l) in &runs.runs {
            want.extend_from_slice(&t.data[o..o + l]);
        }
        let mut a = vec![0u8; runs.len];
        r.read_slice_into(&t.name, &runs, &mut a)
            .expect("plain slice");
        let mut b = vec![0u8; runs.len];
        r2.read_slice_into(&t.name, &runs, &mut b)
            .expect("protected slice");
        assert!(a == want, "plain slice of {:?}", t.name);
        assert!(b == want, "protected slice of {:?}", t.name);
    }
});
