//! Reading files of cryptotensors 0.2.3, for `cryptotensors.migrate`.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use std::collections::{BTreeMap, BTreeSet};

use cryptotensors::legacy::{self, LegacyKeys, LegacyReader, LegacyVerify};
use cryptotensors::PreadFile;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::errors::IntoPy;
use crate::guard::guard;
use crate::keys::{Keys, SigningKey};
use crate::threads::Threads;
use crate::write::write_options;

/// The old package's keys, parsed once (its own JWK dialect: standard
/// base64, `okp` verifying keys), so that `read_legacy` and `migrate` take
/// parsed keys, not text. Its repr shows how many keys, never a secret.
#[pyclass(frozen, module = "cryptotensors._core")]
pub struct LegacyKeyRing {
    keys: LegacyKeys,
}

#[pymethods]
impl LegacyKeyRing {
    /// Parses a JWK, a JSON list of JWKs or `{"keys": [...]}` of the old package.
    #[new]
    fn new(jwks: &str) -> PyResult<LegacyKeyRing> {
        guard("LegacyKeyRing", || {
            Ok(LegacyKeyRing {
                keys: LegacyKeys::parse(jwks).py_err()?,
            })
        })
    }

    fn __len__(&self) -> PyResult<usize> {
        guard("LegacyKeyRing.__len__", || Ok(self.keys.len()))
    }

    fn __repr__(&self) -> PyResult<String> {
        guard("LegacyKeyRing.__repr__", || {
            Ok(format!("LegacyKeyRing({} keys)", self.keys.len()))
        })
    }
}

/// Opens and verifies a legacy file, then reads every tensor (each one's
/// tags all verified before its bytes are returned). `keys`: the old
/// package's keys; `trusted`: its verifying keys, or `None` to
/// skip the old signature (the caller's explicit choice). Returns
/// `{version, algorithm, signature_verified, has_policy, metadata,
/// tensors: [(name, dtype, shape, encrypted, bytes)]}` in file order.
#[pyfunction]
#[pyo3(signature = (path, keys, trusted=None))]
pub fn read_legacy<'py>(
    py: Python<'py>,
    path: PathBuf,
    keys: PyRef<'_, LegacyKeyRing>,
    trusted: Option<PyRef<'_, LegacyKeyRing>>,
) -> PyResult<Bound<'py, PyDict>> {
    guard("read_legacy", || {
        let reader = open_legacy(py, &path, &keys, trusted.as_deref())?;
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

fn open_legacy(
    py: Python<'_>,
    path: &PathBuf,
    keys: &LegacyKeyRing,
    trusted: Option<&LegacyKeyRing>,
) -> PyResult<LegacyReader> {
    let verify = match trusted {
        Some(t) => LegacyVerify::Keys(t.keys.clone()),
        None => LegacyVerify::Skip,
    };
    py.allow_threads(|| -> cryptotensors::Result<_> {
        let source = Arc::new(PreadFile::new(File::open(path)?)?);
        LegacyReader::open(source, &keys.keys, &verify)
    })
    .py_err()
}

/// Migrates a legacy file into `dst`, streaming (see
/// `cryptotensors::legacy::migrate_to_file`): opened and verified as by
/// `read_legacy`, written with `serialize`'s options; the encrypted tensors
/// are those the old file encrypted, or all with `encrypt_all`. Returns
/// `{version, algorithm, signature_verified, has_policy, tensors,
/// plain_tensors}`.
#[pyfunction]
#[pyo3(signature = (src, dst, keys, trusted=None, *, encrypt_all=false, recipients=None, algorithm=None, segment_size=0, sign_with=None, threads=Threads::default(), wrappers=None))]
#[allow(clippy::too_many_arguments)]
pub fn migrate<'py>(
    py: Python<'py>,
    src: PathBuf,
    dst: PathBuf,
    keys: PyRef<'_, LegacyKeyRing>,
    trusted: Option<PyRef<'_, LegacyKeyRing>>,
    encrypt_all: bool,
    recipients: Option<Keys>,
    algorithm: Option<&str>,
    segment_size: usize,
    sign_with: Option<SigningKey>,
    threads: Threads,
    wrappers: Option<Vec<Py<PyAny>>>,
) -> PyResult<Bound<'py, PyDict>> {
    guard("migrate", || {
        let reader = open_legacy(py, &src, &keys, trusted.as_deref())?;
        let names = reader.header().tensors().iter().map(|(n, _)| n.clone());
        let encrypted: Option<BTreeSet<String>> =
            (!encrypt_all).then(|| names.filter(|n| reader.is_encrypted(n)).collect());
        let metadata: BTreeMap<String, String> = reader.user_metadata();
        let opts = write_options(
            Some(metadata).filter(|m| !m.is_empty()),
            recipients,
            encrypted,
            algorithm,
            segment_size,
            sign_with,
            None,
            wrappers,
        )?;
        py.allow_threads(|| threads.run(|| legacy::migrate_to_file(&reader, &opts, &dst)))
            .py_err()?;
        let out = PyDict::new(py);
        out.set_item("version", reader.version())?;
        out.set_item("algorithm", reader.algorithm().name())?;
        out.set_item("signature_verified", reader.signature_verified())?;
        out.set_item("has_policy", reader.has_policy())?;
        out.set_item("tensors", reader.header().tensors().len())?;
        out.set_item("plain_tensors", reader.plain_tensors())?;
        Ok(out)
    })
}
