//! Describing a file from its header alone: no key, nothing decrypted,
//! nothing verified. An [`Inspection`] says how a file is protected even
//! when its header or envelope cannot be understood, and then why
//! ([`Damage`]), so a user learns "this file is damaged; it looks
//! encrypted" instead of only a parse error.
//!
//! The protection is decided fail closed, for loaders that read tensor
//! bytes themselves and so can neither decrypt nor verify: an envelope this
//! build rejects (damaged, or another version) still counts as protected,
//! by its reserved members, and a cryptotensors 0.2.3 file counts as
//! encrypted. When even the header's JSON does not parse, the decision
//! comes from the names of the reserved metadata members appearing in its
//! raw bytes (which were read under the header cap): a damaged file that
//! shows none of them is reported as plain, with its damage. A name
//! written with JSON escapes is not seen by that scan; such a header does
//! not parse here, and so does not load through cryptotensors either.
//!
//! What still fails: a file that cannot be read, one shorter than the
//! 8-byte length prefix, and one whose prefix declares a header over the
//! cap (not a safetensors file: nothing it says is allocated).

use std::fmt;

use crate::envelope::{Envelope, Layout, Protection, MAC_KEY, RESERVED_PREFIX, SIGNATURE_KEY};
use crate::error::{Error, Result};
use crate::header::{Header, Metadata, PREFIX_LEN};
use crate::keys::Recipient;
use crate::{legacy, reader, sign, Dtype, Source};

/// How a whole file is protected, as its header says (unverified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileProtection {
    /// A plain safetensors file (or a damaged one that shows no sign of
    /// cryptotensors).
    Plain,
    /// Signed, with no tensor encrypted.
    Signed,
    /// Some tensors are (or may be) ciphertext.
    Encrypted,
}

impl FileProtection {
    /// `"plain"`, `"signed"` or `"encrypted"`.
    pub fn name(self) -> &'static str {
        match self {
            FileProtection::Plain => "plain",
            FileProtection::Signed => "signed",
            FileProtection::Encrypted => "encrypted",
        }
    }
}

/// Which part of a file was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DamageKind {
    /// The header's declared length runs past the end of the file (a
    /// truncated file): what is present was read.
    Truncated,
    /// The header is not a valid safetensors header (not UTF-8, not the
    /// JSON object of tensor entries, or offsets and sizes that do not
    /// tile the data).
    Header,
    /// The cryptotensors metadata is malformed, or of a version or
    /// algorithm this build does not implement.
    Envelope,
    /// The data after the header is not as long as the header says.
    DataLength,
}

impl DamageKind {
    fn describe(self) -> &'static str {
        match self {
            DamageKind::Truncated => "the header runs past the end of the file (truncated?)",
            DamageKind::Header => "the header is not a valid safetensors header",
            DamageKind::Envelope => "the cryptotensors metadata is not understood",
            DamageKind::DataLength => "the data is not the length the header says",
        }
    }
}

/// Why a file was not understood: the part, and the error reading it
/// raises (the one a loader raises too).
#[derive(Debug)]
pub struct Damage {
    kind: DamageKind,
    error: Error,
}

/// The most characters of the error's text in a damage's [`Display`]: an
/// error about a header can quote the header, which a file bounds only by
/// the header cap.
pub const MAX_DAMAGE_TEXT: usize = 300;

impl Damage {
    /// The part not understood.
    pub fn kind(&self) -> DamageKind {
        self.kind
    }

    /// The error that reading the file raises.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The error, to raise it.
    pub fn into_error(self) -> Error {
        self.error
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.error.to_string();
        match text.char_indices().nth(MAX_DAMAGE_TEXT) {
            Some((cut, _)) => write!(f, "{} ({}…)", self.kind.describe(), &text[..cut]),
            None => write!(f, "{} ({text})", self.kind.describe()),
        }
    }
}

/// One tensor as the header lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSummary {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Bytes in the file.
    pub nbytes: usize,
    /// Whether its bytes are (or, fail closed, may be) ciphertext: the
    /// envelope lists it; or the file is encrypted and which tensors are
    /// cannot be told (a damaged envelope, a 0.2.3 file whose list of
    /// encrypted tensors is unreadable).
    pub encrypted: bool,
}

/// What a file's header says, with no key and nothing verified.
#[derive(Debug)]
pub struct Inspection {
    protection: FileProtection,
    legacy: bool,
    damage: Option<Damage>,
    tensors: Vec<TensorSummary>,
    metadata: Metadata,
    signer: Option<String>,
    envelope: Option<Envelope>,
}

impl Inspection {
    /// Inspects a source. Fails only when the source cannot be read, is
    /// shorter than the length prefix, or declares a header over the cap;
    /// anything else not understood is reported as [`Inspection::damage`].
    pub fn read(source: &dyn Source) -> Result<Inspection> {
        let (json, declared) = reader::read_header_present(source)?;
        let truncated = json.len() < declared;
        let damaged = |kind, error| Some(Damage { kind, error });
        // A truncated header is reported as such (the error a loader
        // raises), whatever else the bytes present break.
        let header_damage = |error| match truncated {
            true => damaged(DamageKind::Truncated, Error::InvalidHeaderLength),
            false => damaged(DamageKind::Header, error),
        };
        let parsed = match Header::parse_json(&json) {
            Ok(p) => p,
            Err(error) => {
                let (protection, legacy) =
                    decide(|k| contains(&json, k), contains(&json, RESERVED_PREFIX));
                return Ok(Inspection::bare(
                    protection,
                    legacy,
                    header_damage(error),
                    Metadata::new(),
                ));
            }
        };
        // Kept for a header whose offsets are wrong: its metadata still
        // says how the file is protected.
        let metadata = parsed.metadata().cloned().unwrap_or_default();
        let header = match Header::validate(parsed) {
            Ok(h) => h,
            Err(error) => {
                let (protection, legacy) =
                    decide(|k| metadata.contains_key(k), reserved(&metadata));
                return Ok(Inspection::bare(
                    protection,
                    legacy,
                    header_damage(error),
                    metadata,
                ));
            }
        };
        let layout = Layout::from_header(&header);
        let (protection, legacy) = classify(&header, &layout);
        let (layout, mut damage) = match layout {
            Ok(layout) => (layout, None),
            Err(error) => (None, damaged(DamageKind::Envelope, error)),
        };
        if truncated {
            // The header read anyway (its cut can fall in its padding) is
            // still described.
            damage = header_damage(Error::InvalidHeaderLength);
        }
        if damage.is_none() {
            let trailer = layout.as_ref().map_or(0, |l| l.trailer_len) as u64;
            let expected = ((PREFIX_LEN + declared) as u64)
                .checked_add(header.data_len() as u64)
                .and_then(|n| n.checked_add(trailer));
            if expected != Some(source.len()) {
                damage = damaged(DamageKind::DataLength, Error::MetadataIncompleteBuffer);
            }
        }
        let legacy_encrypted = legacy.then(|| legacy::encrypted_names(&header)).flatten();
        let tensors = header
            .tensors()
            .iter()
            .enumerate()
            .map(|(pos, (name, info))| TensorSummary {
                name: name.clone(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                nbytes: info.len(),
                encrypted: match (&layout, &legacy_encrypted) {
                    (_, Some(names)) => names.binary_search(name).is_ok(),
                    (Some(l), None) if !legacy => l.entries[pos].0 == Protection::Encrypted,
                    _ => protection == FileProtection::Encrypted,
                },
            })
            .collect();
        let mut out = Inspection::bare(protection, legacy, damage, metadata);
        out.tensors = tensors;
        out.envelope = layout.map(|l| l.envelope);
        Ok(out)
    }

    fn bare(
        protection: FileProtection,
        legacy: bool,
        damage: Option<Damage>,
        metadata: Metadata,
    ) -> Inspection {
        let signer = metadata
            .get(SIGNATURE_KEY)
            .and_then(|jws| sign::signer_hint(jws));
        // A 0.2.3 file's own members (wrapped keys, its signature) are not
        // user metadata either; its migration drops them.
        let metadata = metadata
            .into_iter()
            .filter(|(k, _)| {
                let old_format = legacy && legacy::RESERVED_KEYS.contains(&k.as_str());
                !(k.starts_with(RESERVED_PREFIX) || old_format)
            })
            .collect();
        Inspection {
            protection,
            legacy,
            damage,
            tensors: Vec::new(),
            metadata,
            signer,
            envelope: None,
        }
    }

    /// How the file is protected (fail closed; see the module's notes).
    pub fn protection(&self) -> FileProtection {
        self.protection
    }

    /// Whether this is a file of cryptotensors 0.2.3 (then
    /// [`FileProtection::Encrypted`]; it loads only through a migration).
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// Why the file was not understood, if it was not.
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// Moves the damage out (to raise its error), leaving the rest of the
    /// inspection as it was.
    pub fn take_damage(&mut self) -> Option<Damage> {
        self.damage.take()
    }

    /// Tensors in file order; empty when the header itself is damaged.
    pub fn tensors(&self) -> &[TensorSummary] {
        &self.tensors
    }

    /// The user metadata: every entry of `__metadata__` whose key is not
    /// reserved to the format.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The kid the signature names, unverified: for display only.
    pub fn signer(&self) -> Option<&str> {
        self.signer.as_deref()
    }

    /// The envelope, when the file has one this build understands.
    pub fn envelope(&self) -> Option<&Envelope> {
        self.envelope.as_ref()
    }

    /// The recipient stanzas (public values only), when encrypted.
    pub fn recipients(&self) -> &[Recipient] {
        self.envelope
            .as_ref()
            .and_then(|e| e.encryption.as_ref())
            .map_or(&[], |e| e.recipients.as_slice())
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The protection of a header whose envelope is understood, or rejected.
fn classify(header: &Header, layout: &Result<Option<Layout>>) -> (FileProtection, bool) {
    // As the reader: a legacy file is refused before its envelope is read.
    if legacy::is_legacy(header) {
        return (FileProtection::Encrypted, true);
    }
    let has = |k: &str| header.metadata().is_some_and(|m| m.contains_key(k));
    match layout {
        Ok(Some(l)) => {
            let encrypted = l.envelope.encryption.is_some()
                || l.entries.iter().any(|e| e.0 == Protection::Encrypted);
            if encrypted {
                (FileProtection::Encrypted, false)
            } else if has(SIGNATURE_KEY) {
                (FileProtection::Signed, false)
            } else {
                (FileProtection::Plain, false)
            }
        }
        Ok(None) => (FileProtection::Plain, false),
        Err(_) => decide(has, header.metadata().is_some_and(reserved)),
    }
}

fn reserved(metadata: &Metadata) -> bool {
    metadata.keys().any(|k| k.starts_with(RESERVED_PREFIX))
}

/// The fail-closed decision for a header that is not understood, from
/// which reserved metadata members it has (`has`): the 0.2.3 members make
/// it a legacy file; any member reserved to this format (`reserved`)
/// makes it protected, signed only when it has a signature and no header
/// MAC.
fn decide(has: impl Fn(&str) -> bool, reserved: bool) -> (FileProtection, bool) {
    if has(legacy::ENCRYPTION_KEY) || has(legacy::CRYPTO_KEYS_KEY) {
        return (FileProtection::Encrypted, true);
    }
    if !reserved {
        return (FileProtection::Plain, false);
    }
    if has(SIGNATURE_KEY) && !has(MAC_KEY) {
        (FileProtection::Signed, false)
    } else {
        (FileProtection::Encrypted, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Jwk, KeyKind};
    use crate::writer::{serialize, EncryptOptions, TensorData, WriteOptions};
    use crate::Algorithm;

    const A: [u8; 16] = [1; 16];
    const B: [u8; 8] = [2; 8];

    fn tensors() -> [TensorData<'static>; 2] {
        [
            TensorData {
                name: "a",
                dtype: Dtype::F32,
                shape: &[2, 2],
                data: &A,
            },
            TensorData {
                name: "b",
                dtype: Dtype::U8,
                shape: &[8],
                data: &B,
            },
        ]
    }

    fn user() -> Metadata {
        [("format".to_owned(), "pt".to_owned())].into()
    }

    fn save(encrypt: bool, sign: bool) -> Vec<u8> {
        let opts = WriteOptions {
            metadata: Some(user()),
            encrypt: encrypt.then(|| EncryptOptions {
                recipients: vec![Jwk::generate(KeyKind::Oct).unwrap()],
                tensors: Some(["a".to_owned()].into()),
                algorithm: Algorithm::Aes256Gcm,
                wrappers: Vec::new(),
            }),
            sign_with: sign.then(|| Jwk::generate(KeyKind::Ed25519).unwrap()),
            ..Default::default()
        };
        serialize(&tensors(), &opts).unwrap()
    }

    /// A file of a length prefix, `json` and `data`.
    fn raw(json: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn replace(file: &[u8], from: &str, to: &str) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let at = file
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .expect("present");
        let mut out = file.to_vec();
        out[at..at + to.len()].copy_from_slice(to.as_bytes());
        out
    }

    fn inspect(file: &[u8]) -> Inspection {
        Inspection::read(&file.to_vec()).unwrap()
    }

    fn flags(i: &Inspection) -> Vec<(&str, bool)> {
        i.tensors()
            .iter()
            .map(|t| (t.name.as_str(), t.encrypted))
            .collect()
    }

    #[test]
    fn plain() {
        let i = inspect(&save(false, false));
        assert_eq!(i.protection(), FileProtection::Plain);
        assert!(i.damage().is_none() && !i.is_legacy() && i.envelope().is_none());
        assert_eq!(flags(&i), [("a", false), ("b", false)]);
        assert_eq!(i.tensors()[0].shape, [2, 2]);
        assert_eq!(
            (i.tensors()[0].nbytes, i.tensors()[0].dtype),
            (16, Dtype::F32)
        );
        assert_eq!(i.metadata(), &user());
        assert_eq!(i.signer(), None);
    }

    #[test]
    fn signed() {
        let i = inspect(&save(false, true));
        assert_eq!(i.protection(), FileProtection::Signed);
        assert!(i.damage().is_none());
        assert!(i.signer().is_some_and(|s| !s.is_empty()));
        assert_eq!(
            i.metadata(),
            &user(),
            "reserved members are not user metadata"
        );
        assert!(i.envelope().is_some_and(|e| e.encryption.is_none()));
        assert_eq!(flags(&i), [("a", false), ("b", false)]);
    }

    #[test]
    fn encrypted() {
        let i = inspect(&save(true, false));
        assert_eq!(i.protection(), FileProtection::Encrypted);
        assert!(i.damage().is_none());
        assert_eq!(flags(&i), [("a", true), ("b", false)]);
        assert_eq!(i.recipients().len(), 1);
        let e = i.envelope().unwrap();
        assert_eq!(e.encryption.as_ref().unwrap().algorithm, "AES-256-GCM");
        assert_eq!(e.version, 1);
    }

    fn legacy_json(encryption: &str) -> String {
        let meta =
            serde_json::json!({"__crypto_keys__": "{}", "__encryption__": encryption, "k": "v"});
        serde_json::json!({
            "__metadata__": meta,
            "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
            "b": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]},
        })
        .to_string()
    }

    #[test]
    fn legacy_files_are_encrypted() {
        let entry = r#"{"a":{"wrapped_key":"","key_iv":"","key_tag":""}}"#;
        let i = inspect(&raw(&legacy_json(entry), &[0; 8]));
        assert_eq!(i.protection(), FileProtection::Encrypted);
        assert!(i.is_legacy() && i.damage().is_none());
        assert_eq!(flags(&i), [("a", true), ("b", false)]);
        let user: Metadata = [("k".to_owned(), "v".to_owned())].into();
        assert_eq!(
            i.metadata(),
            &user,
            "the old format's members are not user metadata"
        );
        // The list of encrypted tensors unreadable: every tensor may be.
        let i = inspect(&raw(&legacy_json("not json"), &[0; 8]));
        assert_eq!(flags(&i), [("a", true), ("b", true)]);
    }

    #[test]
    fn a_damaged_envelope_still_counts_as_protected() {
        for (sign, want) in [
            (false, FileProtection::Encrypted),
            (true, FileProtection::Signed),
        ] {
            let file = replace(&save(!sign, sign), r#"\"version\":1"#, r#"\"version\":9"#);
            let i = inspect(&file);
            let d = i.damage().expect("damaged");
            assert_eq!(d.kind(), DamageKind::Envelope);
            assert!(matches!(d.error(), Error::Unsupported(_)));
            assert_eq!(i.protection(), want);
            assert!(i.envelope().is_none());
            // Which tensors are ciphertext cannot be told: all may be.
            let all = !sign;
            assert_eq!(flags(&i), [("a", all), ("b", all)]);
            let file = replace(&save(!sign, sign), r#"\"digest\""#, r#"\"digesT\""#);
            assert!(matches!(
                inspect(&file).damage().unwrap().error(),
                Error::InvalidEnvelope(_)
            ));
        }
    }

    #[test]
    fn json_that_does_not_parse_is_judged_by_its_reserved_names() {
        let cases = [
            (
                r#"{"__metadata__":{"__cryptotensors__":"#,
                FileProtection::Encrypted,
                false,
            ),
            (
                r#"{"__metadata__":{"__cryptotensors_signature__":"x"},"#,
                FileProtection::Signed,
                false,
            ),
            (
                r#"{"__metadata__":{"__cryptotensors_signature__":"x","__cryptotensors_mac__":1"#,
                FileProtection::Encrypted,
                false,
            ),
            (
                r#"{"__metadata__":{"__encryption__":["#,
                FileProtection::Encrypted,
                true,
            ),
            ("[1, 2, 3]", FileProtection::Plain, false),
            ("\"__cryptotensors\"", FileProtection::Encrypted, false),
            ("{\"a\": \u{1}garbage", FileProtection::Plain, false),
        ];
        for (json, want, legacy) in cases {
            let i = inspect(&raw(json, b""));
            assert_eq!((i.protection(), i.is_legacy()), (want, legacy), "{json}");
            let d = i.damage().expect(json);
            assert_eq!(d.kind(), DamageKind::Header);
            assert!(matches!(d.error(), Error::InvalidHeaderDeserialization(_)));
            assert!(i.tensors().is_empty() && i.metadata().is_empty());
        }
        let mut bad = raw("{}", b"");
        bad[8] = 0xff;
        let i = inspect(&bad);
        assert!(matches!(i.damage().unwrap().error(), Error::InvalidHeader));
        assert_eq!(i.protection(), FileProtection::Plain);
    }

    #[test]
    fn bad_offsets_keep_the_metadata() {
        let file = save(true, false);
        let file = replace(
            &file,
            r#""data_offsets":[0,16]"#,
            r#""data_offsets":[0,15]"#,
        );
        let i = inspect(&file);
        let d = i.damage().expect("damaged");
        assert_eq!(d.kind(), DamageKind::Header);
        assert!(matches!(d.error(), Error::TensorInvalidInfo(_)));
        assert_eq!(i.protection(), FileProtection::Encrypted);
        assert_eq!(i.metadata(), &user());
        assert!(i.tensors().is_empty());
    }

    #[test]
    fn a_truncated_file_is_damaged_not_an_error() {
        let file = save(true, false);
        let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        let i = inspect(&file[..8 + n / 2]);
        let d = i.damage().expect("damaged");
        assert_eq!(d.kind(), DamageKind::Truncated);
        assert!(matches!(d.error(), Error::InvalidHeaderLength));
        assert_eq!(i.protection(), FileProtection::Encrypted);
        // Cut in the header's padding: the header is still described.
        let json = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
        let mut file = raw(&format!("{json}        "), b"");
        file.truncate(8 + json.len() + 2);
        let i = inspect(&file);
        assert_eq!(i.damage().unwrap().kind(), DamageKind::Truncated);
        assert_eq!(flags(&i), [("a", false)]);
    }

    #[test]
    fn data_of_the_wrong_length_is_damage() {
        for file in [save(true, false), save(false, false)] {
            let mut longer = file.clone();
            longer.push(0);
            let shorter = &file[..file.len() - 1];
            for f in [&longer[..], shorter] {
                let i = inspect(f);
                let d = i.damage().expect("damaged");
                assert_eq!(d.kind(), DamageKind::DataLength);
                assert!(matches!(d.error(), Error::MetadataIncompleteBuffer));
                assert_eq!(i.tensors().len(), 2);
            }
        }
    }

    #[test]
    fn what_cannot_be_inspected_is_an_error() {
        assert!(matches!(
            Inspection::read(&b"1234567".to_vec()),
            Err(Error::HeaderTooSmall)
        ));
        // A length over the cap is refused before anything is allocated.
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(matches!(
            Inspection::read(&huge),
            Err(Error::HeaderTooLarge)
        ));
        let mut over = (crate::header::MAX_HEADER_SIZE as u64 + 1)
            .to_le_bytes()
            .to_vec();
        over.extend_from_slice(b"{}");
        assert!(matches!(
            Inspection::read(&over),
            Err(Error::HeaderTooLarge)
        ));
    }

    #[test]
    fn the_damage_text_is_bounded() {
        let long = "x".repeat(100_000);
        let json = format!(r#"{{"a":{{"dtype":"{long}","shape":[],"data_offsets":[0,0]}}}}"#);
        let i = inspect(&raw(&json, b""));
        let text = i.damage().unwrap().to_string();
        assert!(
            text.chars().count() < MAX_DAMAGE_TEXT + 100,
            "{}",
            text.len()
        );
        assert!(text.starts_with("the header is not a valid safetensors header ("));
    }
}
