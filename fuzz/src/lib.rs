//! Shared helpers of the fuzz targets: fixed keys, the fixture files that
//! the `decrypt` target mutates, and invariant checks on parsed headers.
//!
//! Everything here is deterministic except the random data keys, salts and
//! wrapping IVs that `writer::serialize` draws for encrypted files; their
//! lengths, and so every byte position in the fixtures, never change.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use cryptotensors::envelope::{MAC_KEY, RESERVED_PREFIX, SIGNATURE_KEY};
use cryptotensors::header::{self, Header, Metadata, TensorInfo};
use cryptotensors::keys::Jwk;
use cryptotensors::reader::{self, LoadOptions, Reader};
use cryptotensors::writer::{self, EncryptOptions, TensorData, WriteOptions};
use cryptotensors::Algorithm;
use cryptotensors::Dtype;

/// The symmetric key every encrypted fixture is wrapped for.
pub const OCT_KEY: &str =
    r#"{"kty":"oct","kid":"fuzz-oct","k":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"}"#;
/// A symmetric key that matches no stanza (another kid).
pub const OTHER_OCT_KEY: &str =
    r#"{"kty":"oct","kid":"fuzz-other","k":"ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1-f4CBgoM"}"#;
/// A symmetric key with the right kid but the wrong secret.
pub const WRONG_OCT_KEY: &str =
    r#"{"kty":"oct","kid":"fuzz-oct","k":"ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1-f4CBgoM"}"#;
/// X25519 private key (RFC 7748 §6.1, Alice).
pub const X25519_KEY: &str = r#"{"kty":"OKP","crv":"X25519","kid":"fuzz-x25519","d":"dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo","x":"hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"}"#;
/// Ed25519 private key (RFC 8037 §A.1).
pub const ED25519_KEY: &str = r#"{"kty":"OKP","crv":"Ed25519","kid":"fuzz-ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;

/// Segment size of the fixtures: the smallest allowed, so that a tensor of a
/// few KiB has several segments.
pub const SEGMENT: usize = 4096;

/// Parses one of the constant keys above.
pub fn key(json: &str) -> Jwk {
    Jwk::parse(json).expect("fixed test key parses")
}

/// The public half of the Ed25519 key.
pub fn signer_public() -> Jwk {
    key(ED25519_KEY).public().expect("public key")
}

/// One tensor of a fixture, with its plaintext.
#[derive(Debug, Clone)]
pub struct Plain {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Plaintext bytes.
    pub data: Vec<u8>,
}

/// Deterministic, non-repeating-looking bytes.
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(0x9e37_79b9);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn plain(name: &str, dtype: Dtype, shape: &[usize], seed: u32) -> Plain {
    let len = dtype.byte_size(shape).expect("fixture shape");
    Plain {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        data: pattern(seed, len),
    }
}

/// The tensors of every fixture: a multi-segment one (3 segments of 4 KiB,
/// the last partial), a one-segment one, an empty one, a scalar and a
/// sub-byte one.
pub fn fixture_tensors() -> Vec<Plain> {
    vec![
        plain("model.layers.0.weight", Dtype::F32, &[2, 1100], 1),
        plain("model.layers.0.bias", Dtype::F32, &[2, 1100], 2),
        plain("b", Dtype::U8, &[5], 3),
        plain("empty", Dtype::BF16, &[0, 3], 4),
        plain("scalar", Dtype::I64, &[], 5),
        plain("packed", Dtype::F4, &[6], 6),
    ]
}

/// How a fixture is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// AES-256-GCM, every tensor encrypted, one oct recipient.
    AesAll,
    /// ChaCha20-Poly1305, two tensors encrypted and the rest digested,
    /// user metadata.
    ChachaPartial,
    /// AES-256-GCM, every tensor, and signed with Ed25519.
    AesSigned,
    /// Signed only: every tensor digested.
    SignedOnly,
    /// AES-256-GCM for an X25519 recipient and an oct recipient.
    AesTwoRecipients,
    /// A plain safetensors file (no protection: any data mutation is
    /// legitimately returned; only "never panic" applies).
    Plain,
}

/// Every fixture kind, in selector order.
pub const KINDS: [Kind; 6] = [
    Kind::AesAll,
    Kind::ChachaPartial,
    Kind::AesSigned,
    Kind::SignedOnly,
    Kind::AesTwoRecipients,
    Kind::Plain,
];

/// A fixture: the file bytes and what a correct reader returns for them.
#[derive(Debug)]
pub struct Fixture {
    /// Kind.
    pub kind: Kind,
    /// The file.
    pub bytes: Vec<u8>,
    /// Its parsed header (for comparison with a mutated file's).
    pub header: Header,
    /// The plaintext of each tensor.
    pub tensors: Vec<Plain>,
}

impl Fixture {
    /// Plaintext of a tensor by name.
    pub fn plaintext(&self, name: &str) -> Option<&Plain> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

fn user_metadata() -> Metadata {
    let mut m = Metadata::new();
    m.insert("format".into(), "pt".into());
    m.insert("note".into(), "fuzz \"fixture\" \u{e9}".into());
    m
}

/// Builds one fixture with `writer::serialize`.
pub fn build_fixture(kind: Kind) -> Fixture {
    let tensors = fixture_tensors();
    let data: Vec<TensorData> = tensors
        .iter()
        .map(|t| TensorData {
            name: &t.name,
            dtype: t.dtype,
            shape: &t.shape,
            data: &t.data,
        })
        .collect();
    let enc = |algorithm, recipients: Vec<Jwk>, tensors: Option<&[&str]>| {
        Some(EncryptOptions {
            recipients,
            tensors: tensors.map(|t| t.iter().map(|s| s.to_string()).collect()),
            algorithm,
            wrappers: Vec::new(),
        })
    };
    let mut opts = WriteOptions {
        segment_size: SEGMENT,
        ..WriteOptions::default()
    };
    match kind {
        Kind::AesAll => opts.encrypt = enc(Algorithm::Aes256Gcm, vec![key(OCT_KEY)], None),
        Kind::ChachaPartial => {
            opts.encrypt = enc(
                Algorithm::ChaCha20Poly1305,
                vec![key(OCT_KEY)],
                Some(&["model.layers.0.weight", "packed"]),
            );
            opts.metadata = Some(user_metadata());
        }
        Kind::AesSigned => {
            opts.encrypt = enc(Algorithm::Aes256Gcm, vec![key(OCT_KEY)], None);
            opts.sign_with = Some(key(ED25519_KEY));
            opts.reserve = 24;
        }
        Kind::SignedOnly => {
            opts.sign_with = Some(key(ED25519_KEY));
            opts.metadata = Some(user_metadata());
        }
        Kind::AesTwoRecipients => {
            let x = key(X25519_KEY).public().expect("public");
            opts.encrypt = enc(Algorithm::Aes256Gcm, vec![x, key(OCT_KEY)], None);
        }
        Kind::Plain => opts.metadata = Some(user_metadata()),
    }
    let bytes = writer::serialize(&data, &opts).expect("fixture serializes");
    let (header, _) = reader::read_header(&bytes).expect("fixture header parses");
    Fixture {
        kind,
        bytes,
        header,
        tensors,
    }
}

/// The fixtures, built once per process.
pub fn fixtures() -> &'static [Fixture] {
    static F: OnceLock<Vec<Fixture>> = OnceLock::new();
    F.get_or_init(|| KINDS.iter().map(|&k| build_fixture(k)).collect())
}

/// Checks the invariants every successfully parsed header must satisfy, and
/// that encoding it and parsing it again gives the same header.
pub fn check_header(h: &Header) {
    let mut end = 0usize;
    for (i, (name, info)) in h.tensors().iter().enumerate() {
        assert_eq!(info.data_offsets.0, end, "tensors tile the buffer");
        assert!(info.data_offsets.1 >= info.data_offsets.0);
        assert_eq!(
            info.dtype.byte_size(&info.shape).ok(),
            Some(info.len()),
            "byte size of {name:?}"
        );
        assert_eq!(h.position(name), Some(i), "index of {name:?}");
        assert_eq!(h.tensor(name).ok(), Some(info));
        end = info.data_offsets.1;
    }
    assert_eq!(h.data_len(), end);
    if let Some(m) = h.metadata() {
        for (k, v) in m {
            assert_eq!(h.metadata_value(k), Some(v.as_str()));
        }
    }
    // Re-encode and re-parse: same header (duplicates are resolved, so the
    // re-encoded text has none).
    let Ok(bytes) = header::encode(
        h.metadata(),
        h.tensors().iter().map(|(n, i)| (n.as_str(), i)),
        0,
    ) else {
        // Only a header over the size limit fails to encode.
        return;
    };
    let n = header::read_prefix(&bytes, bytes.len() as u64).expect("own prefix");
    assert_eq!(n + header::PREFIX_LEN, bytes.len());
    assert_eq!(n % 8, 0, "padded to 8");
    let h2 = Header::parse(&bytes[header::PREFIX_LEN..]).expect("re-encoded header parses");
    assert_eq!(h2.metadata(), h.metadata(), "metadata survives re-encoding");
    assert_eq!(h2.tensors(), h.tensors(), "tensors survive re-encoding");
    assert!(!h2.has_duplicate_keys());
}

/// Opens `bytes` and reads every tensor, returning the tensors and their
/// bytes; never panics by itself.
pub fn open_and_read(
    bytes: Vec<u8>,
    opts: &LoadOptions,
) -> cryptotensors::Result<(Reader, Vec<(String, TensorInfo, Vec<u8>)>)> {
    let r = Reader::open(Arc::new(bytes), opts)?;
    let mut out = Vec::new();
    for (name, info) in r.header().tensors() {
        let mut buf = vec![0u8; info.len()];
        r.read_into(name, &mut buf)?;
        out.push((name.clone(), info.clone(), buf));
    }
    Ok((r, out))
}

/// User metadata: everything but the format's reserved keys.
pub fn user_part(m: Option<&Metadata>) -> Metadata {
    m.map(|m| {
        m.iter()
            .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    })
    .unwrap_or_default()
}

/// Metadata without the signature entry.
pub fn without_signature(m: Option<&Metadata>) -> Option<Metadata> {
    m.map(|m| {
        let mut m = m.clone();
        m.remove(SIGNATURE_KEY);
        m
    })
}

/// Whether metadata carries a MAC.
pub fn has_mac(m: Option<&Metadata>) -> bool {
    m.is_some_and(|m| m.contains_key(MAC_KEY))
}

/// Names as a set.
pub fn names<'a>(it: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    it.map(str::to_owned).collect()
}

/// A little reader over fuzzer bytes that yields zeros when exhausted.
#[derive(Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// Wraps input bytes.
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }
    /// Whether all input was consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// One byte (0 when exhausted).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    /// Up to `n` raw bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
}
