//! The one error type of the crate.
//!
//! Parsing errors are detailed so the user learns which field is wrong.
//! Cryptographic failures are deliberately opaque: [`Error::Integrity`] says
//! only that authentication failed, never which byte or why, so that no
//! oracle leaks. "Not my key" ([`Error::KeyNotFound`]) stays distinct from
//! "my key, but the data is corrupt" ([`Error::Integrity`]).

use std::fmt;

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a signature check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureFailure {
    /// Trust is configured but the file carries no signature.
    Missing,
    /// The signature does not verify over the header.
    Invalid,
    /// The signature verifies, but under a key the loader does not trust.
    Untrusted,
}

/// Every error of the crate.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The file is shorter than the 8-byte length prefix.
    HeaderTooSmall,
    /// The declared header length exceeds the cap.
    HeaderTooLarge,
    /// The declared header length runs past the end of the file.
    InvalidHeaderLength,
    /// The header is not UTF-8.
    InvalidHeader,
    /// The header is not the JSON the format requires.
    InvalidHeaderDeserialization(String),
    /// A dtype name the format does not know.
    InvalidDtype(String),
    /// No tensor of that name.
    TensorNotFound(String),
    /// A tensor's byte size does not match its dtype and shape.
    TensorInvalidInfo(String),
    /// A tensor's offsets leave a hole, overlap another, or run backwards.
    InvalidOffset(String),
    /// The data buffer is not exactly covered by the tensors.
    MetadataIncompleteBuffer,
    /// A size computation overflowed.
    ValidationOverflow,
    /// A bit count is not a whole number of bytes.
    MisalignedSlice,
    /// A slice index is out of range or malformed.
    InvalidSlice(String),
    /// An I/O error.
    Io(std::io::Error),
    /// The crypto metadata of the header is malformed.
    InvalidEnvelope(String),
    /// A format version or algorithm this build does not implement.
    Unsupported(String),
    /// A key is malformed or of the wrong kind. Never carries key material.
    InvalidKey(String),
    /// An argument to a call is invalid.
    InvalidArgument(String),
    /// None of the keys given can open this file; these kids would.
    KeyNotFound {
        /// The recipients' key ids listed in the file.
        kids: Vec<String>,
    },
    /// Authentication failed: wrong key or tampered data.
    Integrity,
    /// A signature is missing, invalid or untrusted.
    Signature(SignatureFailure),
    /// The loader requires encryption and the file is not encrypted.
    EncryptionRequired,
    /// The file's access policy denied the load.
    PolicyDenied(String),
    /// A file of cryptotensors 0.2.3 (its metadata has `__encryption__` or
    /// `__crypto_keys__`): not a plain file, and not read by the loaders.
    LegacyFormat,
    /// A key provider or key wrapper outside this crate (an HSM, a key
    /// service, a Python object) failed; its own error is the source, so
    /// that a binding can hand it back to its caller unchanged.
    KeyProvider(Box<dyn std::error::Error + Send + Sync>),
    /// The caller's progress hook stopped a write (see
    /// [`crate::progress::Progress`]); nothing was written.
    Stopped,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match self {
            HeaderTooSmall => write!(f, "Error while deserializing header: HeaderTooSmall"),
            HeaderTooLarge => write!(f, "Error while deserializing header: HeaderTooLarge"),
            InvalidHeaderLength => {
                write!(f, "Error while deserializing header: InvalidHeaderLength")
            }
            InvalidHeader => write!(f, "Error while deserializing header: InvalidHeader (not UTF-8)"),
            InvalidHeaderDeserialization(why) => write!(
                f,
                "Error while deserializing header: InvalidHeaderDeserialization: {why}"
            ),
            InvalidDtype(d) => write!(f, "Error while deserializing header: unknown dtype {d:?}"),
            TensorNotFound(name) => write!(f, "File does not contain tensor {name}"),
            TensorInvalidInfo(name) => write!(
                f,
                "Error while deserializing header: TensorInvalidInfo: size of tensor {name:?} does not match its dtype and shape"
            ),
            InvalidOffset(name) => write!(
                f,
                "Error while deserializing header: InvalidOffset: tensor {name:?} leaves a hole or overlaps"
            ),
            MetadataIncompleteBuffer => write!(
                f,
                "Error while deserializing header: MetadataIncompleteBuffer: the data buffer is not exactly covered by the tensors"
            ),
            ValidationOverflow => write!(f, "Error while deserializing header: ValidationOverflow"),
            MisalignedSlice => write!(
                f,
                "Error while deserializing header: MisalignedSlice: bit count is not a whole number of bytes"
            ),
            InvalidSlice(why) => write!(f, "Invalid slice: {why}"),
            Io(e) => write!(f, "I/O error: {e}"),
            InvalidEnvelope(why) => write!(f, "Invalid cryptotensors header: {why}"),
            Unsupported(what) => write!(f, "Unsupported: {what}"),
            InvalidKey(why) => write!(f, "Invalid key: {why}"),
            InvalidArgument(why) => write!(f, "Invalid argument: {why}"),
            KeyNotFound { kids } => write!(
                f,
                "No key given can decrypt this file. Pass keys= or set CRYPTOTENSORS_KEYS with a JWK of one of these kids: {}",
                kids.join(", ")
            ),
            Integrity => write!(
                f,
                "Decryption failed: the key is wrong or the file was modified"
            ),
            Signature(SignatureFailure::Missing) => write!(
                f,
                "Signature missing: trusted signers are configured but the file is not signed"
            ),
            Signature(SignatureFailure::Invalid) => write!(
                f,
                "Signature invalid: the header was modified after signing"
            ),
            Signature(SignatureFailure::Untrusted) => write!(
                f,
                "Signature untrusted: the file is signed by a key that is not in trusted_signers"
            ),
            EncryptionRequired => write!(
                f,
                "File is not encrypted, but the loader requires encryption (require_encryption=True)"
            ),
            PolicyDenied(why) => write!(f, "Access policy denied the load: {why}"),
            LegacyFormat => write!(
                f,
                "This is a file of cryptotensors 0.2.3 (the paper's reference implementation), not a plain safetensors file: its tensors may be ciphertext. Convert it with `cryptotensors migrate`"
            ),
            KeyProvider(e) => write!(f, "Key provider failed: {e}"),
            Stopped => write!(f, "Stopped by the progress hook: nothing was written"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::KeyProvider(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

/// The variants no other module's tests produce, each asserted exactly
/// (the rest are asserted where they arise: header, dtype, slice, keys,
/// sign, policy, reader, and the vectors in `tests/vectors.rs`).
#[cfg(test)]
mod tests {
    use super::Error;
    use crate::reader::{LoadOptions, Reader};
    use crate::slice::{Index, SliceRuns};
    use crate::writer::{self, TensorData, WriteOptions};
    use crate::Dtype;
    use std::sync::Arc;

    fn plain_file() -> Vec<u8> {
        let data = [0u8; 16];
        let tensor = TensorData {
            name: "w",
            dtype: Dtype::F32,
            shape: &[2, 2],
            data: &data,
        };
        writer::serialize(&[tensor], &WriteOptions::default()).unwrap()
    }

    fn open(bytes: Vec<u8>, opts: &LoadOptions) -> crate::Result<Reader> {
        Reader::open(Arc::new(bytes), opts)
    }

    #[test]
    fn unknown_tensor_is_tensor_not_found() {
        let reader = open(plain_file(), &LoadOptions::default()).unwrap();
        let mut out = [0u8; 16];
        let e = reader.read_into("absent", &mut out).unwrap_err();
        assert!(
            matches!(&e, Error::TensorNotFound(n) if n == "absent"),
            "{e:?}"
        );
    }

    #[test]
    fn trailing_bytes_are_metadata_incomplete_buffer() {
        let mut bytes = plain_file();
        bytes.push(0);
        let e = open(bytes, &LoadOptions::default()).unwrap_err();
        assert!(matches!(e, Error::MetadataIncompleteBuffer), "{e:?}");
    }

    #[test]
    fn out_of_range_reads_and_indexes_are_invalid_slice() {
        let reader = open(plain_file(), &LoadOptions::default()).unwrap();
        let mut out = [0u8; 8];
        let e = reader.read_range_into("w", 12, &mut out).unwrap_err();
        assert!(matches!(e, Error::InvalidSlice(_)), "{e:?}");
        let e =
            SliceRuns::new(Dtype::F32, &[2, 2], &[Index::Ellipsis, Index::Ellipsis]).unwrap_err();
        assert!(matches!(e, Error::InvalidSlice(_)), "{e:?}");
    }

    #[test]
    fn wrong_output_length_is_invalid_argument() {
        let reader = open(plain_file(), &LoadOptions::default()).unwrap();
        let mut out = [0u8; 15];
        let e = reader.read_into("w", &mut out).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    }

    #[test]
    fn plain_file_under_require_encryption_is_encryption_required() {
        let opts = LoadOptions {
            require_encryption: true,
            ..LoadOptions::default()
        };
        let e = open(plain_file(), &opts).unwrap_err();
        assert!(matches!(e, Error::EncryptionRequired), "{e:?}");
    }

    #[test]
    fn missing_directory_is_io_with_its_kind() {
        let dir = std::env::temp_dir().join(format!("cryptotensors-error-{}", std::process::id()));
        let data = [0u8; 4];
        let tensor = TensorData {
            name: "w",
            dtype: Dtype::F32,
            shape: &[1],
            data: &data,
        };
        let e =
            writer::serialize_to_file(&[tensor], &WriteOptions::default(), &dir.join("absent/x"))
                .unwrap_err();
        assert!(
            matches!(&e, Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound),
            "{e:?}"
        );
    }
}
