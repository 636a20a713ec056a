//! Reading files of cryptotensors 0.2.3, for `cryptotensors.migrate`.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use cryptotensors::legacy::{LegacyKeys, LegacyReader, LegacyVerify};
use cryptotensors::PreadFile;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::errors::IntoPy;
use crate::guard::guard;

/// Opens and verifies a legacy file, then reads every tensor (each one's
/// tags all verified before its bytes are returned). `keys`: the old
/// package's keys (JSON text); `trusted`: its verifying keys, or `None` to
/// skip the old signature (the caller's explicit choice). Returns
/// `{version, algorithm, signature_verified, has_policy, metadata,
/// tensors: [(name, dtype, shape, encrypted, bytes)]}` in file order.
#[pyfunction]
#[pyo3(signature = (path, keys, trusted=None))]
pub fn read_legacy<'py>(
    py: Python<'py>,
    path: PathBuf,
    keys: &str,
    trusted: Option<&str>,
) -> PyResult<Bound<'py, PyDict>> {
    guard("read_legacy", || {
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
        let out = PyDict::new(py);
        out.set_item("version", reader.version())?;
        out.set_item("algorithm", reader.algorithm().name())?;
        out.set_item("signature_verified", reader.signature_verified())?;
        out.set_item("has_policy", reader.has_policy())?;
        out.set_item("metadata", reader.user_metadata())?;
        let tensors = PyList::empty(py);
        for (name, info) in reader.header().tensors() {
            let data = PyBytes::new_with(py, info.len(), |buf| {
                py.allow_threads(|| reader.read_into(name, buf)).py_err()
            })?;
            tensors.append((
                name,
                info.dtype.name(),
                info.shape.clone(),
                reader.is_encrypted(name),
                data,
            ))?;
        }
        out.set_item("tensors", tensors)?;
        Ok(out)
    })
}
