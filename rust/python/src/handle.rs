//! An open file, shared between Python threads. Closing drops the handle's
//! reference; slices and reads already started keep their own.

use std::fs::File;
use std::sync::{Arc, RwLock};

use cryptotensors::crypto::DataKey;
use cryptotensors::envelope::RESERVED_PREFIX;
use cryptotensors::keys::Jwk;
use cryptotensors::reader::{LoadOptions, Reader};
use cryptotensors::slice::{Index, SliceRuns};
use cryptotensors::{Error, PreadFile, Source};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::buffer::WriteBuffer;
use crate::errors::LegacyFormatError;
use crate::errors::{to_py, IntoPy, SafetensorError};
use crate::guard::guard;
use crate::threads::Threads;

/// `(dtype, shape, nbytes, encrypted, raw_offset)`, see [`Handle::info`].
type TensorFacts = (&'static str, Vec<usize>, usize, bool, Option<u64>);

#[pyclass(frozen, module = "cryptotensors._core")]
pub struct Handle {
    reader: RwLock<Option<Arc<Reader>>>,
    threads: Threads,
}

/// Parses a key set, reusing the parse of identical text: loaders that open
/// a file once per tensor pass the same key ring every time.
fn parse_keys(json: Option<&str>) -> cryptotensors::Result<Vec<Jwk>> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    // Keyed by a digest, so the map holds no second copy of secret text.
    static PARSED: OnceLock<Mutex<HashMap<Vec<u8>, Vec<Jwk>>>> = OnceLock::new();
    let Some(json) = json else {
        return Ok(Vec::new());
    };
    let id = ring::digest::digest(&ring::digest::SHA256, json.as_bytes())
        .as_ref()
        .to_vec();
    let parsed = PARSED.get_or_init(Default::default);
    if let Some(keys) = parsed.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return Ok(keys.clone());
    }
    let keys = Jwk::parse_set(json)?;
    let mut parsed = parsed.lock().unwrap_or_else(|e| e.into_inner());
    if parsed.len() >= 16 {
        parsed.clear();
    }
    parsed.insert(id, keys.clone());
    Ok(keys)
}

/// Data keys handed over by Python key providers (see `_providers.py`).
pub fn data_keys(provided: Option<Vec<Vec<u8>>>) -> cryptotensors::Result<Vec<DataKey>> {
    provided
        .unwrap_or_default()
        .iter()
        .map(|b| {
            DataKey::from_bytes(b).ok_or_else(|| {
                Error::InvalidKey("a key provider returned a data key that is not 32 bytes".into())
            })
        })
        .collect()
}

fn options(
    keys: Option<&str>,
    trusted: Option<&str>,
    require_encryption: bool,
    provided: Option<Vec<Vec<u8>>>,
    policy_input: Option<String>,
) -> cryptotensors::Result<LoadOptions> {
    Ok(LoadOptions {
        policy_input,
        keys: parse_keys(keys)?,
        trusted_signers: parse_keys(trusted)?,
        require_encryption,
        data_keys: data_keys(provided)?,
        // CRYPTOTENSORS_OPEN_CACHE=0 turns off the verified-header cache.
        cache: std::env::var_os("CRYPTOTENSORS_OPEN_CACHE").is_none_or(|v| v != "0"),
    })
}

/// Converts a Python index description (built by the Python layer) into
/// core indices: `("i", n)`, `("s", start, stop, step)` or `("e",)`.
fn parse_index(items: &Bound<'_, PyList>) -> PyResult<Vec<Index>> {
    items
        .iter()
        .map(|item| {
            let t = item.downcast::<PyTuple>()?;
            let tag: String = t.get_item(0)?.extract()?;
            Ok(match tag.as_str() {
                "i" => Index::Select(t.get_item(1)?.extract()?),
                "s" => Index::Range {
                    start: t.get_item(1)?.extract()?,
                    stop: t.get_item(2)?.extract()?,
                    step: t.get_item(3)?.extract()?,
                },
                "e" => Index::Ellipsis,
                _ => return Err(SafetensorError::new_err("invalid index kind")),
            })
        })
        .collect()
}

impl Handle {
    pub(crate) fn get(&self) -> PyResult<Arc<Reader>> {
        self.reader
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| SafetensorError::new_err("File is closed"))
    }

    fn open_source(
        py: Python<'_>,
        source: Arc<dyn Source>,
        opts: LoadOptions,
        threads: Threads,
    ) -> PyResult<Handle> {
        let reader = py.allow_threads(|| Reader::open(source, &opts)).py_err()?;
        Ok(Handle {
            reader: RwLock::new(Some(Arc::new(reader))),
            threads,
        })
    }
}

#[pymethods]
impl Handle {
    /// Opens a file with the "mmap" or "pread" backend.
    #[staticmethod]
    #[pyo3(signature = (path, backend, keys=None, trusted=None, require_encryption=false, threads=Threads::default(), data_keys=None, policy_input=None))]
    #[allow(clippy::too_many_arguments)]
    fn open(
        py: Python<'_>,
        path: std::path::PathBuf,
        backend: &str,
        keys: Option<&str>,
        trusted: Option<&str>,
        require_encryption: bool,
        threads: Threads,
        data_keys: Option<Vec<Vec<u8>>>,
        policy_input: Option<String>,
    ) -> PyResult<Handle> {
        guard("Handle.open", || {
            let opts =
                options(keys, trusted, require_encryption, data_keys, policy_input).py_err()?;
            // Both backends read through pread. With "mmap", plain tensors for
            // torch on the CPU are mapped zero-copy by torch itself (see
            // `_frameworks.Torch.mapped`); every other read is one copy, by the
            // kernel, from the page cache into the caller's tensor. Mapping the
            // file here as well would only add the file's pages to the process's
            // resident memory (the reads copy them anyway).
            if backend != "mmap" && backend != "pread" {
                return Err(to_py(Error::InvalidArgument(format!(
                    "unknown backend {backend:?}: expected \"mmap\" or \"pread\""
                ))));
            }
            let source: Arc<dyn Source> = py
                .allow_threads(|| -> cryptotensors::Result<Arc<dyn Source>> {
                    Ok(Arc::new(PreadFile::new(File::open(&path)?)?))
                })
                .py_err()?;
            // A legacy file is refused naming the file, so that a user
            // loading a model directory learns which one to migrate.
            Handle::open_source(py, source, opts, threads).map_err(|e| {
                if e.is_instance_of::<LegacyFormatError>(py) {
                    LegacyFormatError::new_err(format!("{}: {}", path.display(), e.value(py)))
                } else {
                    e
                }
            })
        })
    }

    /// Opens serialized bytes (copied once).
    #[staticmethod]
    #[pyo3(signature = (data, keys=None, trusted=None, require_encryption=false, threads=Threads::default(), data_keys=None, policy_input=None))]
    #[allow(clippy::too_many_arguments)]
    fn from_bytes(
        py: Python<'_>,
        data: &[u8],
        keys: Option<&str>,
        trusted: Option<&str>,
        require_encryption: bool,
        threads: Threads,
        data_keys: Option<Vec<Vec<u8>>>,
        policy_input: Option<String>,
    ) -> PyResult<Handle> {
        guard("Handle.from_bytes", || {
            let opts =
                options(keys, trusted, require_encryption, data_keys, policy_input).py_err()?;
            Handle::open_source(py, Arc::new(data.to_vec()), opts, threads)
        })
    }

    /// Another handle on the same open file, unaffected by `close` here.
    fn share(&self) -> PyResult<Handle> {
        guard("Handle.share", || {
            Ok(Handle {
                reader: RwLock::new(Some(self.get()?)),
                threads: self.threads,
            })
        })
    }

    fn close(&self) -> PyResult<()> {
        guard("Handle.close", || {
            *self.reader.write().unwrap_or_else(|e| e.into_inner()) = None;
            Ok(())
        })
    }

    #[getter]
    fn closed(&self) -> PyResult<bool> {
        guard("Handle.closed", || {
            Ok(self
                .reader
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_none())
        })
    }

    /// Tensor names in file (offset) order.
    fn offset_keys(&self) -> PyResult<Vec<String>> {
        guard("Handle.offset_keys", || {
            Ok(self
                .get()?
                .header()
                .tensors()
                .iter()
                .map(|(n, _)| n.clone())
                .collect())
        })
    }

    /// User metadata: the `__metadata__` map without the format's reserved
    /// entries; `None` if the file has none.
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        guard("Handle.metadata", || {
            let r = self.get()?;
            let Some(m) = r.header().metadata() else {
                return Ok(None);
            };
            let user: Vec<(&String, &String)> = m
                .iter()
                .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
                .collect();
            if user.is_empty() && r.layout().is_some() {
                return Ok(None);
            }
            let d = PyDict::new(py);
            for (k, v) in user {
                d.set_item(k, v)?;
            }
            Ok(Some(d))
        })
    }

    /// `(dtype, shape, nbytes, encrypted, raw_offset)` of a tensor;
    /// `raw_offset` is the file offset when its bytes are usable as stored.
    fn info(&self, name: &str) -> PyResult<TensorFacts> {
        guard("Handle.info", || {
            let r = self.get()?;
            let i = r.header().tensor(name).py_err()?;
            Ok((
                i.dtype.name(),
                i.shape.clone(),
                i.len(),
                r.is_encrypted(name),
                r.raw_offset(name).py_err()?,
            ))
        })
    }

    /// Reads a whole tensor into `out`, a writable C-contiguous buffer of
    /// exactly its size, without the GIL.
    fn read_into(&self, py: Python<'_>, name: &str, out: &Bound<'_, PyAny>) -> PyResult<()> {
        guard("Handle.read_into", || {
            let r = self.get()?;
            let mut buf = WriteBuffer::new(out, "out")?;
            let out = buf.bytes();
            py.allow_threads(|| self.threads.run(|| r.read_into(name, out)))
                .py_err()
        })
    }

    /// Reads bytes `[offset, offset + len(out))` of a tensor into `out`, a
    /// writable C-contiguous buffer, without the GIL.
    fn read_range_into(
        &self,
        py: Python<'_>,
        name: &str,
        offset: usize,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        guard("Handle.read_range_into", || {
            let r = self.get()?;
            let mut buf = WriteBuffer::new(out, "out")?;
            let out = buf.bytes();
            py.allow_threads(|| self.threads.run(|| r.read_range_into(name, offset, out)))
                .py_err()
        })
    }

    /// Output shape and byte length of an index applied to a tensor.
    fn slice_shape(&self, name: &str, index: &Bound<'_, PyList>) -> PyResult<(Vec<usize>, usize)> {
        guard("Handle.slice_shape", || {
            let r = self.get()?;
            let i = r.header().tensor(name).py_err()?;
            let runs = SliceRuns::new(i.dtype, &i.shape, &parse_index(index)?).py_err()?;
            Ok((runs.shape, runs.len))
        })
    }

    /// Reads an index of a tensor into `out`, a writable C-contiguous
    /// buffer of the slice's size, without the GIL.
    fn read_slice_into(
        &self,
        py: Python<'_>,
        name: &str,
        index: &Bound<'_, PyList>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        guard("Handle.read_slice_into", || {
            let r = self.get()?;
            let i = r.header().tensor(name).py_err()?;
            let runs = SliceRuns::new(i.dtype, &i.shape, &parse_index(index)?).py_err()?;
            let mut buf = WriteBuffer::new(out, "out")?;
            let out = buf.bytes();
            py.allow_threads(|| self.threads.run(|| r.read_slice_into(name, &runs, out)))
                .py_err()
        })
    }

    /// File-level facts for inspection: encryption algorithm, segment size,
    /// recipient kids, encrypted tensor names and verified signer.
    fn describe<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        guard("Handle.describe", || {
            let r = self.get()?;
            let d = PyDict::new(py);
            d.set_item("signer", r.signer())?;
            if let Some(l) = r.layout() {
                d.set_item("segment_size", l.envelope.segment_size)?;
                if let Some(e) = &l.envelope.encryption {
                    d.set_item("algorithm", &e.algorithm)?;
                    d.set_item(
                        "recipients",
                        e.recipients
                            .iter()
                            .map(|r| r.kid.clone())
                            .collect::<Vec<_>>(),
                    )?;
                    d.set_item("encrypted", e.tensors.clone())?;
                }
            }
            Ok(d)
        })
    }
}
