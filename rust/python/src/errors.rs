//! Core errors to Python exceptions. Every failure becomes a
//! `SafetensorError` subclass (or `FileNotFoundError`, as in safetensors).

use cryptotensors::error::Error;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyPermissionError};
use pyo3::prelude::*;

create_exception!(
    cryptotensors,
    SafetensorError,
    PyException,
    "Any error of the safetensors format or of decryption."
);
create_exception!(
    cryptotensors,
    KeyNotFoundError,
    SafetensorError,
    "No key given can open the file."
);
create_exception!(
    cryptotensors,
    IntegrityError,
    SafetensorError,
    "Wrong key or tampered data."
);
create_exception!(
    cryptotensors,
    SignatureError,
    SafetensorError,
    "Missing, invalid or untrusted signature."
);
create_exception!(
    cryptotensors,
    PolicyDeniedError,
    SafetensorError,
    "The file's access policy denied the load."
);
create_exception!(
    cryptotensors,
    LegacyFormatError,
    SafetensorError,
    "A file of cryptotensors 0.2.3: convert it with `cryptotensors migrate`."
);
create_exception!(
    cryptotensors,
    InternalError,
    SafetensorError,
    "A bug in cryptotensors stopped the call (a Rust panic, caught at the boundary)."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("SafetensorError", py.get_type::<SafetensorError>())?;
    m.add("KeyNotFoundError", py.get_type::<KeyNotFoundError>())?;
    m.add("IntegrityError", py.get_type::<IntegrityError>())?;
    m.add("SignatureError", py.get_type::<SignatureError>())?;
    m.add("PolicyDeniedError", py.get_type::<PolicyDeniedError>())?;
    m.add("LegacyFormatError", py.get_type::<LegacyFormatError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    Ok(())
}

/// Converts a core error into the matching Python exception.
pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            PyPermissionError::new_err(msg)
        }
        Error::KeyNotFound { .. } => KeyNotFoundError::new_err(msg),
        Error::Integrity | Error::EncryptionRequired => IntegrityError::new_err(msg),
        Error::Signature(_) => SignatureError::new_err(msg),
        Error::PolicyDenied(_) => PolicyDeniedError::new_err(msg),
        Error::LegacyFormat => LegacyFormatError::new_err(msg),
        _ => SafetensorError::new_err(msg),
    }
}

/// `Result` conversion shorthand.
pub trait IntoPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for cryptotensors::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
