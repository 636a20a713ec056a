//! Core errors to Python exceptions: the one place they are mapped, one
//! class per kind of [`Error`], so that callers (and the CLI's exit codes)
//! branch on the class, never on message text.
//!
//! Every library failure is a `SafetensorError` subclass, except the two
//! operating-system errors safetensors itself raises as plain built-ins
//! (`FileNotFoundError`, and `PermissionError`); every I/O failure is an
//! `OSError` with its `errno`.

use cryptotensors::Error;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyOSError, PyPermissionError};
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyTuple, PyType};

create_exception!(
    cryptotensors,
    SafetensorError,
    PyException,
    "Any error of the safetensors format or of decryption."
);
create_exception!(
    cryptotensors,
    UnsupportedError,
    SafetensorError,
    "A format version or algorithm this build does not implement: the file may be valid."
);
create_exception!(
    cryptotensors,
    InvalidKeyError,
    SafetensorError,
    "A key is malformed or of the wrong kind (the message never holds key material)."
);
create_exception!(
    cryptotensors,
    InvalidArgumentError,
    SafetensorError,
    "An argument of the call is invalid (not the file: a bad index, buffer size, option or policy text)."
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
// A subclass of IntegrityError, not a sibling: a plaintext file where the
// loader demands ciphertext is what a swapped-in file looks like, so code
// written before this class existed (`except IntegrityError`, and the CLI's
// integrity exit code) keeps treating it as the integrity failure it is.
create_exception!(
    cryptotensors,
    EncryptionRequiredError,
    IntegrityError,
    "The loader requires encryption (require_encryption=True) and the file is not encrypted."
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

/// The `OSError` of I/O failures other than not-found and permission: both
/// an `OSError` (with `errno` and `strerror`, as safetensors raises them) and
/// a `SafetensorError` (as cryptotensors always raised them). Defined in
/// Python: a class with two exception bases cannot come from
/// `create_exception!`.
static SAFETENSOR_OS_ERROR: pyo3::sync::GILOnceCell<Py<PyType>> = pyo3::sync::GILOnceCell::new();

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("SafetensorError", py.get_type::<SafetensorError>())?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    m.add("InvalidKeyError", py.get_type::<InvalidKeyError>())?;
    m.add(
        "InvalidArgumentError",
        py.get_type::<InvalidArgumentError>(),
    )?;
    m.add("KeyNotFoundError", py.get_type::<KeyNotFoundError>())?;
    m.add("IntegrityError", py.get_type::<IntegrityError>())?;
    m.add(
        "EncryptionRequiredError",
        py.get_type::<EncryptionRequiredError>(),
    )?;
    m.add("SignatureError", py.get_type::<SignatureError>())?;
    m.add("PolicyDeniedError", py.get_type::<PolicyDeniedError>())?;
    m.add("LegacyFormatError", py.get_type::<LegacyFormatError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    let os_error = py
        .import("builtins")?
        .getattr("type")?
        .call1((
            "SafetensorOSError",
            PyTuple::new(
                py,
                [
                    py.get_type::<SafetensorError>().into_any(),
                    py.get_type::<PyOSError>().into_any(),
                ],
            )?,
            [
                ("__module__", "cryptotensors"),
                (
                    "__doc__",
                    "An operating-system error while reading or writing a file (errno says which).",
                ),
            ]
            .into_py_dict(py)?,
        ))?
        .downcast_into::<PyType>()?;
    m.add("SafetensorOSError", &os_error)?;
    let _ = SAFETENSOR_OS_ERROR.set(py, os_error.unbind());
    Ok(())
}

/// Converts a core error into the matching Python exception.
pub fn to_py(e: Error) -> PyErr {
    // A Python key provider's or wrapper's own exception, raised again.
    let e = match e {
        Error::KeyProvider(source) => match source.downcast::<PyErr>() {
            Ok(py_err) => return *py_err,
            Err(other) => Error::KeyProvider(other),
        },
        e => e,
    };
    let msg = e.to_string();
    match e {
        Error::Io(io) => os_error(io),
        Error::Unsupported(_) => UnsupportedError::new_err(msg),
        Error::InvalidKey(_) => InvalidKeyError::new_err(msg),
        Error::InvalidArgument(_) => InvalidArgumentError::new_err(msg),
        Error::KeyNotFound { .. } => KeyNotFoundError::new_err(msg),
        Error::Integrity => IntegrityError::new_err(msg),
        Error::EncryptionRequired => EncryptionRequiredError::new_err(msg),
        Error::Signature(_) => SignatureError::new_err(msg),
        Error::PolicyDenied(_) => PolicyDeniedError::new_err(msg),
        Error::LegacyFormat => LegacyFormatError::new_err(msg),
        _ => SafetensorError::new_err(msg),
    }
}

/// `OSError(errno, strerror)`: the class picked by the error's kind, the
/// arguments as Python's own OS errors carry them, so `str()` reads
/// `[Errno 2] No such file or directory` and `.errno`/`.strerror` are set.
fn os_error(io: std::io::Error) -> PyErr {
    let errno = io.raw_os_error();
    let full = io.to_string();
    // std's text of an OS error is "<strerror> (os error N)".
    let strerror = match errno {
        Some(n) => full
            .strip_suffix(&format!(" (os error {n})"))
            .unwrap_or(&full)
            .to_owned(),
        None => full,
    };
    Python::with_gil(|py| {
        let cls = match io.kind() {
            std::io::ErrorKind::NotFound => py.get_type::<PyFileNotFoundError>(),
            std::io::ErrorKind::PermissionDenied => py.get_type::<PyPermissionError>(),
            _ => match SAFETENSOR_OS_ERROR.get(py) {
                Some(cls) => cls.bind(py).clone(),
                None => py.get_type::<PyOSError>(),
            },
        };
        match errno {
            Some(n) => PyErr::from_type(cls, (n, strerror)),
            // No errno (a short read, say): the text alone, as OSError("...").
            None => PyErr::from_type(cls, (strerror,)),
        }
    })
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
