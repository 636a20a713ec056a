//! Segmented authenticated encryption of tensor bytes. See FORMAT.md §4–5.
//!
//! A file has one random 256-bit data key. From it and the file's salt,
//! HKDF-SHA256 derives a key commitment, the header MAC key and one key per
//! tensor, bound to the tensor's name, dtype, shape and offsets. A tensor is
//! cut into segments of `segment_size` bytes; each is sealed with a
//! deterministic nonce made of its index and a last-segment flag, and its tag
//! is stored out of line in the file's trailer.
//!
//! Opening and sealing are separate types. The only way to obtain an
//! [`OpeningKey`], and so any key that decrypts, is [`OpeningKey::verify`],
//! which checks the key commitment and the header MAC first: no code path
//! reaches tensor data under an unverified header. A [`SealingKey`] is made
//! only by the writer, from the data key it generated, and cannot open.

use ring::aead::{self, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// Length of data keys, tensor keys and commitments.
pub const KEY_LEN: usize = 32;
/// Length of an AEAD tag.
pub const TAG_LEN: usize = 16;
/// Length of the per-file HKDF salt.
pub const SALT_LEN: usize = 32;
/// Smallest and largest segment sizes a file may declare.
pub const MIN_SEGMENT_SIZE: usize = 1 << 12;
/// See [`MIN_SEGMENT_SIZE`].
pub const MAX_SEGMENT_SIZE: usize = 1 << 30;
/// Default segment size: 1 MiB.
pub const DEFAULT_SEGMENT_SIZE: usize = 1 << 20;

const LABEL_COMMIT: &[u8] = b"cryptotensors/v1 key commitment";
const LABEL_MAC: &[u8] = b"cryptotensors/v1 header mac";
const LABEL_TENSOR: &[u8] = b"cryptotensors/v1 tensor key";

/// The AEAD that seals tensor segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// AES-256-GCM (the default).
    Aes256Gcm,
    /// ChaCha20-Poly1305, for hosts without AES instructions.
    ChaCha20Poly1305,
}

impl Algorithm {
    /// The name written in headers.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Aes256Gcm => "AES-256-GCM",
            Algorithm::ChaCha20Poly1305 => "ChaCha20-Poly1305",
        }
    }

    /// Parses a header algorithm name.
    pub fn parse(name: &str) -> Result<Algorithm> {
        match name {
            "AES-256-GCM" => Ok(Algorithm::Aes256Gcm),
            "ChaCha20-Poly1305" => Ok(Algorithm::ChaCha20Poly1305),
            other => Err(Error::Unsupported(format!("algorithm {other:?}"))),
        }
    }

    fn ring(self) -> &'static aead::Algorithm {
        match self {
            Algorithm::Aes256Gcm => &aead::AES_256_GCM,
            Algorithm::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// 32 secret bytes that are wiped on drop and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretBytes([u8; KEY_LEN]);

impl SecretBytes {
    /// Wraps bytes; the caller wipes its own copy.
    #[cfg(test)]
    pub fn new(bytes: [u8; KEY_LEN]) -> Self {
        SecretBytes(bytes)
    }

    /// Fresh random bytes from the system CSPRNG.
    pub fn random() -> Result<Self> {
        let mut b = [0u8; KEY_LEN];
        fill_random(&mut b)?;
        Ok(SecretBytes(b))
    }

    /// Copies a slice that must be exactly [`KEY_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(SecretBytes(bytes.try_into().ok()?))
    }

    /// The secret bytes. Callers must not log or keep them.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes(..)")
    }
}

/// Fills `out` from the system CSPRNG.
pub fn fill_random(out: &mut [u8]) -> Result<()> {
    SystemRandom::new()
        .fill(out)
        .map_err(|_| Error::Io(std::io::Error::other("system random source failed")))
}

/// The random per-file key that recipients wrap. Not usable for data until
/// the reader (`OpeningKey::verify`) has checked it against the header.
#[derive(Debug, Clone)]
pub struct DataKey(pub(crate) SecretBytes);

impl DataKey {
    /// A data key from bytes; `None` unless it is 32 bytes. It still has to
    /// pass [`OpeningKey::verify`]. Outside the crate, a provider's key
    /// comes in through `keys::provided_key`.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<DataKey> {
        SecretBytes::from_slice(bytes).map(DataKey)
    }

    /// The key's bytes, for a key wrapper outside this crate (an HSM, a key
    /// service, a Python object) that must be handed the key to wrap it:
    /// `KeyWrapper::wrap_data_key` gets a `&DataKey`, and the binding's
    /// Python wrappers pass these bytes on. It is `pub` for that alone; the
    /// bytes alone open nothing without the header they are committed to.
    /// Callers must not log or keep them.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        self.0.expose()
    }

    /// A fresh random data key.
    pub fn generate() -> Result<DataKey> {
        Ok(DataKey(SecretBytes::random()?))
    }

    fn prk(&self, salt: &[u8]) -> hkdf::Prk {
        hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(self.0.expose())
    }

    /// The key commitment written in the header.
    pub fn commitment(&self, salt: &[u8]) -> [u8; KEY_LEN] {
        expand32(&self.prk(salt), &[LABEL_COMMIT])
    }
}

/// HKDF output length of 32 bytes.
struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

fn expand32(prk: &hkdf::Prk, info: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    prk.expand(info, Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// What a tensor key is bound to (FORMAT.md §4.3).
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: &'a [usize],
    /// Data offsets `[start, end)`.
    pub offsets: (usize, usize),
}

impl Binding<'_> {
    fn encode(&self, alg: Algorithm) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.name.len() + 8 * self.shape.len());
        put_bytes(&mut b, alg.name().as_bytes());
        put_bytes(&mut b, self.name.as_bytes());
        put_bytes(&mut b, self.dtype.name().as_bytes());
        put_u64(&mut b, self.shape.len() as u64);
        for &d in self.shape {
            put_u64(&mut b, d as u64);
        }
        put_u64(&mut b, self.offsets.0 as u64);
        put_u64(&mut b, self.offsets.1 as u64);
        b
    }
}

/// Appends a big-endian u64.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a u64 length prefix and the bytes.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The key schedule of one file: what both an [`OpeningKey`] and a
/// [`SealingKey`] derive tensor keys from. Private, so the only ways to hold
/// one are those two types' constructors.
struct Schedule {
    prk: hkdf::Prk,
    alg: Algorithm,
    segment_size: usize,
}

impl Schedule {
    fn new(data_key: &DataKey, alg: Algorithm, segment_size: usize, salt: &[u8]) -> Schedule {
        Schedule {
            prk: data_key.prk(salt),
            alg,
            segment_size,
        }
    }

    fn segment_key(&self, binding: &Binding) -> SegmentKey {
        let bound = binding.encode(self.alg);
        let mut raw = expand32(&self.prk, &[LABEL_TENSOR, &bound]);
        let key = LessSafeKey::new(UnboundKey::new(self.alg.ring(), &raw).expect("32-byte key"));
        raw.zeroize();
        let len = binding.offsets.1 - binding.offsets.0;
        SegmentKey {
            key,
            segments: segment_count(len, self.segment_size),
        }
    }
}

/// The key that opens the tensors of a file whose key commitment and header
/// MAC have been checked against its data key. Only [`OpeningKey::verify`]
/// makes one, so no code path reaches tensor data under an unverified
/// header; it cannot seal.
pub struct OpeningKey(Schedule);

/// The key a writer seals tensors with, from the data key it just generated.
/// It cannot open: a writer's key never decrypts.
pub struct SealingKey(Schedule);

impl std::fmt::Debug for OpeningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpeningKey({})", self.0.alg.name())
    }
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey({})", self.0.alg.name())
    }
}

/// Computes the header MAC for a data key (writers only; readers go
/// through [`OpeningKey::verify`]).
pub(crate) fn header_mac(
    data_key: &DataKey,
    salt: &[u8],
    canonical_header: &[u8],
) -> [u8; KEY_LEN] {
    let mac_key = expand32(&data_key.prk(salt), &[LABEL_MAC]);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &mac_key);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(hmac::sign(&key, canonical_header).as_ref());
    out
}

impl OpeningKey {
    /// Checks the key commitment and the header MAC, and only then yields
    /// the key that opens tensors. Any mismatch is [`Error::Integrity`].
    pub(crate) fn verify(
        data_key: &DataKey,
        alg: Algorithm,
        segment_size: usize,
        salt: &[u8],
        commitment: &[u8],
        canonical_header: &[u8],
        mac: &[u8],
    ) -> Result<OpeningKey> {
        let schedule = Schedule::new(data_key, alg, segment_size, salt);
        let expected = expand32(&schedule.prk, &[LABEL_COMMIT]);
        // The commitment is public (it is in the header), so a plain comparison
        // leaks nothing; the MAC below is checked in constant time by ring.
        if expected[..] != *commitment {
            return Err(Error::Integrity);
        }
        let mac_key = expand32(&schedule.prk, &[LABEL_MAC]);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &mac_key);
        hmac::verify(&key, canonical_header, mac).map_err(|_| Error::Integrity)?;
        Ok(OpeningKey(schedule))
    }

    /// The key that opens one tensor.
    pub(crate) fn tensor_key(&self, binding: &Binding) -> TensorOpeningKey {
        TensorOpeningKey(self.0.segment_key(binding))
    }
}

impl SealingKey {
    /// For writers, which hold the data key they just generated.
    pub(crate) fn new(
        data_key: &DataKey,
        alg: Algorithm,
        segment_size: usize,
        salt: &[u8],
    ) -> SealingKey {
        SealingKey(Schedule::new(data_key, alg, segment_size, salt))
    }

    /// The key that seals one tensor.
    pub(crate) fn tensor_key(&self, binding: &Binding) -> TensorSealingKey {
        TensorSealingKey(self.0.segment_key(binding))
    }
}

/// Number of segments of a tensor of `len` bytes; an empty tensor still has
/// one (empty) segment, so that its emptiness is authenticated.
pub fn segment_count(len: usize, segment_size: usize) -> u64 {
    (len.div_ceil(segment_size)).max(1) as u64
}

/// The nonce of one segment: its index and whether it is the last one.
/// Private, so nonces can only be made by [`TensorKey`], which knows how many
/// segments the tensor has and so sets the last flag itself.
struct SegmentNonce {
    index: u64,
    last: bool,
}

impl SegmentNonce {
    fn into_nonce(self) -> Nonce {
        let mut n = [0u8; aead::NONCE_LEN];
        n[..8].copy_from_slice(&self.index.to_be_bytes());
        n[11] = u8::from(self.last);
        // Each tensor key is unique to (file salt, data key, binding), and
        // within it each index is used once.
        Nonce::assume_unique_for_key(n)
    }
}

/// The AEAD key of one tensor, which knows its segment count. Private:
/// outside this module it is only reachable as a [`TensorOpeningKey`] or a
/// [`TensorSealingKey`].
struct SegmentKey {
    key: LessSafeKey,
    segments: u64,
}

impl SegmentKey {
    fn nonce(&self, index: u64) -> Result<Nonce> {
        if index >= self.segments {
            return Err(Error::Integrity);
        }
        Ok(SegmentNonce {
            index,
            last: index + 1 == self.segments,
        }
        .into_nonce())
    }

    fn fmt(&self, what: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{what}({:?}, {} segments)",
            self.key.algorithm(),
            self.segments
        )
    }
}

/// The key that opens the segments of one tensor of a verified file.
pub struct TensorOpeningKey(SegmentKey);

/// The key that seals the segments of one tensor a writer writes.
pub struct TensorSealingKey(SegmentKey);

impl std::fmt::Debug for TensorOpeningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt("TensorOpeningKey", f)
    }
}

impl std::fmt::Debug for TensorSealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt("TensorSealingKey", f)
    }
}

impl TensorOpeningKey {
    /// Number of segments.
    #[cfg(test)]
    fn segments(&self) -> u64 {
        self.0.segments
    }

    /// Decrypts one segment in place. On failure the buffer is wiped, so no
    /// unauthenticated plaintext survives.
    pub(crate) fn open(&self, index: u64, tag: &[u8], buf: &mut [u8]) -> Result<()> {
        let tag = Tag::try_from(tag).map_err(|_| Error::Integrity)?;
        let nonce = self.0.nonce(index)?;
        if self
            .0
            .key
            .open_in_place_separate_tag(nonce, Aad::empty(), tag, buf, 0..)
            .is_err()
        {
            buf.fill(0);
            return Err(Error::Integrity);
        }
        Ok(())
    }
}

impl TensorSealingKey {
    /// Number of segments.
    #[cfg(test)]
    fn segments(&self) -> u64 {
        self.0.segments
    }

    /// Encrypts one segment in place and returns its tag.
    pub(crate) fn seal(&self, index: u64, buf: &mut [u8]) -> Result<[u8; TAG_LEN]> {
        let tag = self
            .0
            .key
            .seal_in_place_separate_tag(self.0.nonce(index)?, Aad::empty(), buf)
            .map_err(|_| Error::Integrity)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding<'a>(name: &'a str, shape: &'a [usize]) -> Binding<'a> {
        Binding {
            name,
            dtype: Dtype::U8,
            shape,
            offsets: (0, shape.iter().product()),
        }
    }

    /// A writer's sealing key and the opening key a reader of its header
    /// would verify.
    fn keys(alg: Algorithm) -> (SealingKey, OpeningKey) {
        let dk = DataKey::generate().unwrap();
        let salt = [7; SALT_LEN];
        let sk = SealingKey::new(&dk, alg, MIN_SEGMENT_SIZE, &salt);
        let mac = header_mac(&dk, &salt, b"header");
        let ok = OpeningKey::verify(
            &dk,
            alg,
            MIN_SEGMENT_SIZE,
            &salt,
            &dk.commitment(&salt),
            b"header",
            &mac,
        )
        .unwrap();
        (sk, ok)
    }

    #[test]
    fn segments_round_trip_and_bind_index() {
        for alg in [Algorithm::Aes256Gcm, Algorithm::ChaCha20Poly1305] {
            let (sk, ok) = keys(alg);
            let shape = [3 * MIN_SEGMENT_SIZE];
            let seal = sk.tensor_key(&binding("w", &shape));
            let open = ok.tensor_key(&binding("w", &shape));
            assert_eq!((seal.segments(), open.segments()), (3, 3));
            let mut a = vec![1u8; 16];
            let tag = seal.seal(0, &mut a).unwrap();
            let mut swapped = a.clone();
            assert!(matches!(
                open.open(1, &tag, &mut swapped),
                Err(Error::Integrity)
            ));
            assert!(
                swapped.iter().all(|&b| b == 0),
                "failed open wipes the buffer"
            );
            open.open(0, &tag, &mut a).unwrap();
            assert_eq!(a, vec![1u8; 16]);
            assert!(seal.seal(3, &mut [0u8; 1]).is_err(), "index past the end");
        }
    }

    #[test]
    fn tensor_keys_bind_name_and_shape() {
        let (sk, ok) = keys(Algorithm::Aes256Gcm);
        let mut buf = vec![9u8; 8];
        let tag = sk
            .tensor_key(&binding("a", &[8]))
            .seal(0, &mut buf)
            .unwrap();
        let mut c = buf.clone();
        assert!(ok
            .tensor_key(&binding("b", &[8]))
            .open(0, &tag, &mut c)
            .is_err());
        let mut c = buf.clone();
        assert!(ok
            .tensor_key(&binding("a", &[2, 4]))
            .open(0, &tag, &mut c)
            .is_err());
        ok.tensor_key(&binding("a", &[8]))
            .open(0, &tag, &mut buf)
            .unwrap();
    }

    /// A key of another file and a flipped ciphertext byte fail with the
    /// same opaque error: nothing tells the two apart.
    #[test]
    fn wrong_key_and_tampering_fail_alike() {
        let (sk, ok) = keys(Algorithm::Aes256Gcm);
        let (_, other) = keys(Algorithm::Aes256Gcm);
        let shape = [64];
        let mut ct = vec![5u8; 64];
        let tag = sk
            .tensor_key(&binding("w", &shape))
            .seal(0, &mut ct)
            .unwrap();
        let mut wrong_key = ct.clone();
        let e1 = other
            .tensor_key(&binding("w", &shape))
            .open(0, &tag, &mut wrong_key)
            .unwrap_err();
        let mut flipped = ct.clone();
        flipped[17] ^= 1;
        let e2 = ok
            .tensor_key(&binding("w", &shape))
            .open(0, &tag, &mut flipped)
            .unwrap_err();
        assert!(matches!(e1, Error::Integrity) && matches!(e2, Error::Integrity));
        assert_eq!(format!("{e1}"), format!("{e2}"));
        assert_eq!(format!("{e1:?}"), format!("{e2:?}"));
        assert_eq!(wrong_key, vec![0u8; 64]);
        assert_eq!(flipped, vec![0u8; 64]);
    }

    #[test]
    fn verify_checks_commitment_and_mac() {
        let dk = DataKey::generate().unwrap();
        let salt = [1u8; SALT_LEN];
        let c = dk.commitment(&salt);
        let mac = header_mac(&dk, &salt, b"header");
        let alg = Algorithm::Aes256Gcm;
        let seg = MIN_SEGMENT_SIZE;
        assert!(OpeningKey::verify(&dk, alg, seg, &salt, &c, b"header", &mac).is_ok());
        let bad_mac = OpeningKey::verify(&dk, alg, seg, &salt, &c, b"headex", &mac);
        assert!(matches!(bad_mac, Err(Error::Integrity)));
        let other = DataKey::generate().unwrap();
        let bad_commit = OpeningKey::verify(&other, alg, seg, &salt, &c, b"header", &mac);
        assert!(matches!(bad_commit, Err(Error::Integrity)));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = SecretBytes::new([0xAB; KEY_LEN]);
        assert_eq!(format!("{s:?}"), "SecretBytes(..)");
        let dk = DataKey::from_bytes(&[0xAB; KEY_LEN]).unwrap();
        assert!(!format!("{dk:?}").to_lowercase().contains("ab"));
        let (sk, ok) = keys(Algorithm::Aes256Gcm);
        assert_eq!(format!("{sk:?}"), "SealingKey(AES-256-GCM)");
        assert_eq!(format!("{ok:?}"), "OpeningKey(AES-256-GCM)");
    }

    /// Single-core segment throughput through ring, for the speed notes of
    /// benches/RESULTS.md. A test rather than an example, since the keys it
    /// needs are crate-private. Run:
    /// `cargo test --release -p cryptotensors aead_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn aead_speed() {
        use std::time::Instant;
        let seg = DEFAULT_SEGMENT_SIZE;
        let total = 256usize << 20;
        for alg in [Algorithm::Aes256Gcm, Algorithm::ChaCha20Poly1305] {
            let (sk, ok) = keys(alg);
            let shape = [total];
            let b = Binding {
                name: "t",
                dtype: Dtype::U8,
                shape: &shape,
                offsets: (0, total),
            };
            let (seal, open) = (sk.tensor_key(&b), ok.tensor_key(&b));
            let mut buf = vec![7u8; total];
            let start = Instant::now();
            let tags: Vec<[u8; TAG_LEN]> = buf
                .chunks_mut(seg)
                .enumerate()
                .map(|(i, c)| seal.seal(i as u64, c).unwrap())
                .collect();
            let sealed = start.elapsed().as_secs_f64();
            let src = buf.clone();
            let start = Instant::now();
            for (i, (c, s)) in buf.chunks_mut(seg).zip(src.chunks(seg)).enumerate() {
                c.copy_from_slice(s);
                open.open(i as u64, &tags[i], c).unwrap();
            }
            let opened = start.elapsed().as_secs_f64();
            let gbs = |dt: f64| total as f64 / dt / 1e9;
            println!(
                "{}: copy+open {:.2} GB/s, seal in place {:.2} GB/s on one core",
                alg.name(),
                gbs(opened),
                gbs(sealed)
            );
        }
    }
}
