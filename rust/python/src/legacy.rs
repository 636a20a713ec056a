//! Reading files of cryptotensors 0.2.3, for `cryptotensors.migrate`.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use cryptotensors::legacy::{LegacyKeys, LegacyReader, LegacyVerify};
use cryptotensors::PreadFile;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::IntoPy;
use crate::guard::guard;

/// An open, verified legacy file: `keys` are the old package's keys (JSON
/// text), `trusted` its verifying keys, or `None` to skip the signature
/// (the caller's explicit choice).
#[pyclass(frozen, module = "cryptotensors._core")]
pub struct LegacyFile {
    reader: Arc<LegacyReader>,
}

#[pymethods]
impl LegacyFile {
    #[new]
    #[pyo3(signature = (path, keys, trusted=None))]
    fn new(py: Python<'_>, path: PathBuf, keys: &str, trusted: Option<&str>) -> PyResult<Self> {
        guard("LegacyFile", || {
            let keys = LegacyKeys::parse(keys).py_err()?;
            let verify = match trusted {
                Some(t) => LegacyVerify::Keys(LegacyKeys::parse(t).py_err()?),
                None => LegacyVerify::Skip,
            };
            let reader = py
                .allow_threads(|| -> cryptotensors::Result<_> {
                    let source = Arc::new(PreadFile::new(File::open(&path)?)?);
                    LegacyReader::open(source, &keys, &verify)
                })
                .py_err()?;
            Ok(LegacyFile {
                reader: Arc::new(reader),
            })
        })
    }

    /// `(name, dtype, shape, encrypted)` of each tensor, in file order.
    fn tensors(&self) -> Vec<(String, &'static str, Vec<usize>, bool)> {
        let r = &self.reader;
        r.header()
            .tensors()
            .iter()
            .map(|(n, i)| {
                (
                    n.clone(),
                    i.dtype.name(),
                    i.shape.clone(),
                    r.is_encrypted(n),
                )
            })
            .collect()
    }

    /// User metadata (the old format's four entries removed).
    fn metadata(&self) -> std::collections::BTreeMap<String, String> {
        self.reader.user_metadata()
    }

    #[getter]
    fn version(&self) -> u8 {
        self.reader.version()
    }

    #[getter]
    fn algorithm(&self) -> &'static str {
        self.reader.algorithm().name()
    }

    #[getter]
    fn signature_verified(&self) -> bool {
        self.reader.signature_verified()
    }

    #[getter]
    fn has_policy(&self) -> bool {
        self.reader.has_policy()
    }

    /// A tensor's bytes, every tag verified first.
    fn read<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
        guard("LegacyFile.read", || {
            let len = self.reader.header().tensor(name).py_err()?.len();
            let reader = self.reader.clone();
            PyBytes::new_with(py, len, |buf| {
                py.allow_threads(|| reader.read_into(name, buf)).py_err()
            })
        })
    }
}
