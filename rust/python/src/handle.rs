//! An open file, shared between Python threads. Closing drops the handle's
//! reference; slices and reads already started keep their own.

use std::fs::File;
use std::sync::{Arc, RwLock};

use cryptotensors::envelope::RESERVED_PREFIX;
use cryptotensors::reader::{LoadOptions, Reader};
use cryptotensors::slice::SliceRuns;
use cryptotensors::{Error, PreadFile, Source};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::args::{strict_index, torch_index, SliceIndex};
use crate::buffer::WriteBuffer;
use crate::errors::LegacyFormatError;
use crate::errors::{to_py, IntoPy, SafetensorError};
use crate::guard::guard;
use crate::identity::PyProviders;
use crate::keys::KeyRing;
use crate::threads::Threads;

/// `(dtype, shape, nbytes, encrypted, raw_offset)`, see [`Handle::info`].
type TensorFacts = (&'static str, Vec<usize>, usize, bool, Option<u64>);

/// `(index, shape, nbytes)`, see [`Handle::select`].
type Selection = (Py<SliceIndex>, Vec<usize>, usize);

#[pyclass(frozen, module = "cryptotensors._core")]
pub struct Handle {
    reader: RwLock<Option<Arc<Reader>>>,
    threads: Threads,
}

fn options(
    keys: Option<PyRef<'_, KeyRing>>,
    trusted: Option<PyRef<'_, KeyRing>>,
    require_encryption: bool,
    providers: Option<Py<PyAny>>,
    policy_input: Option<String>,
) -> LoadOptions {
    LoadOptions {
        policy_input,
        keys: keys.map(|k| k.keys().to_vec()).unwrap_or_default(),
        trusted_signers: trusted.map(|k| k.keys().to_vec()).unwrap_or_default(),
        require_encryption,
        providers: providers.map(PyProviders::shared),
        // CRYPTOTENSORS_OPEN_CACHE=0 turns off the verified-header cache.
        cache: std::env::var_os("CRYPTOTENSORS_OPEN_CACHE").is_none_or(|v| v != "0"),
    }
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
    /// Opens a file with the "mmap" or "pread" backend. `keys` and `trusted`
    /// are key rings; `providers`, a callable returning the key providers,
    /// is called only when the key ring opens nothing.
    #[staticmethod]
    #[pyo3(signature = (path, backend, keys=None, trusted=None, require_encryption=false, threads=Threads::default(), providers=None, policy_input=None))]
    #[allow(clippy::too_many_arguments)]
    fn open(
        py: Python<'_>,
        path: std::path::PathBuf,
        backend: &str,
        keys: Option<PyRef<'_, KeyRing>>,
        trusted: Option<PyRef<'_, KeyRing>>,
        require_encryption: bool,
        threads: Threads,
        providers: Option<Py<PyAny>>,
        policy_input: Option<String>,
    ) -> PyResult<Handle> {
        guard("Handle.open", || {
            let opts = options(keys, trusted, require_encryption, providers, policy_input);
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
    #[pyo3(signature = (data, keys=None, trusted=None, require_encryption=false, threads=Threads::default(), providers=None, policy_input=None))]
    #[allow(clippy::too_many_arguments)]
    fn from_bytes(
        py: Python<'_>,
        data: &[u8],
        keys: Option<PyRef<'_, KeyRing>>,
        trusted: Option<PyRef<'_, KeyRing>>,
        require_encryption: bool,
        threads: Threads,
        providers: Option<Py<PyAny>>,
        policy_input: Option<String>,
    ) -> PyResult<Handle> {
        guard("Handle.from_bytes", || {
            let opts = options(keys, trusted, require_encryption, providers, policy_input);
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

    /// `(index, shape, nbytes)`: an index of a tensor converted for the
    /// core's slicer, with the shape and byte length of what it selects.
    /// With `torch=False` the index follows safetensors' own slicer rules
    /// and a refused one raises their error; with `torch=True` it follows
    /// torch's basic indexing, and what the core does not slice natively
    /// gives `None` (the caller indexes the whole tensor).
    #[pyo3(signature = (name, key, torch=false))]
    fn select(
        &self,
        py: Python<'_>,
        name: &str,
        key: &Bound<'_, PyAny>,
        torch: bool,
    ) -> PyResult<Option<Selection>> {
        guard("Handle.select", || {
            let r = self.get()?;
            let i = r.header().tensor(name).py_err()?;
            let index = if torch {
                match torch_index(key)? {
                    Some(index) => index,
                    None => return Ok(None),
                }
            } else {
                strict_index(key, &i.shape)?
            };
            let runs = SliceRuns::new(i.dtype, &i.shape, &index).py_err()?;
            Ok(Some((
                Py::new(py, SliceIndex { index })?,
                runs.shape,
                runs.len,
            )))
        })
    }

    /// Reads an index of a tensor (from [`Handle::select`]) into `out`, a
    /// writable C-contiguous buffer of the slice's size, without the GIL.
    fn read_slice_into(
        &self,
        py: Python<'_>,
        name: &str,
        index: PyRef<'_, SliceIndex>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        guard("Handle.read_slice_into", || {
            let r = self.get()?;
            let i = r.header().tensor(name).py_err()?;
            // Resolved against this tensor, whichever one it was selected on.
            let runs = SliceRuns::new(i.dtype, &i.shape, &index.index).py_err()?;
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
