//! Header-only inspection: the core's [`cryptotensors::inspect::Inspection`]
//! as a read-only Python object, typed attributes and the mapping of the
//! dict `inspect` used to return. No decision is made here.

use std::fs::File;

use cryptotensors::inspect::{FileProtection, Inspection as Facts};
use cryptotensors::PreadFile;
use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::BoundObject;

use crate::errors::{to_py, IntoPy};
use crate::guard::guard;

fn read(py: Python<'_>, path: &std::path::Path) -> PyResult<Facts> {
    py.allow_threads(|| -> cryptotensors::Result<_> {
        Facts::read(&PreadFile::new(File::open(path)?)?)
    })
    .py_err()
}

/// "encrypted" or "signed" for a file cryptotensors protects, None for a
/// plain safetensors file: the core's fail-closed decision from the header
/// alone (see `cryptotensors::inspect`). Raises only for a file that cannot
/// be read or is not a safetensors file at all (shorter than its length
/// prefix, or a header length over the cap).
#[pyfunction]
pub fn protection(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Option<&'static str>> {
    guard("protection", || {
        Ok(match read(py, &path)?.protection() {
            FileProtection::Plain => None,
            p => Some(p.name()),
        })
    })
}

/// Describes a file from its header alone; a damaged file is described as
/// far as it can be, with `damage` saying why, instead of raising.
#[pyfunction]
pub fn inspect(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Inspection> {
    guard("inspect", || {
        let mut facts = read(py, &path)?;
        let damage = facts.take_damage();
        Ok(Inspection {
            damage: damage.as_ref().map(|d| d.to_string()),
            error: damage.map(|d| to_py(d.into_error()).into_value(py)),
            facts,
        })
    })
}

/// What a file's header says, with no key and nothing verified.
#[pyclass(frozen, mapping, module = "cryptotensors._core")]
pub struct Inspection {
    facts: Facts,
    /// The core's damage, as text (bounded there).
    damage: Option<String>,
    /// The exception behind `damage`, for `check()`.
    error: Option<Py<pyo3::exceptions::PyBaseException>>,
}

impl Inspection {
    /// The keys of the mapping, in order: those of the dict `inspect`
    /// returned before (a key absent there is absent here), then
    /// `protection` and `damage`.
    fn keys_present(&self) -> Vec<&'static str> {
        let mut keys = vec!["protection", "damage", "tensors", "metadata", "signer"];
        if let Some(e) = self.facts.envelope() {
            keys.extend(["format_version", "segment_size", "policy"]);
            if e.encryption.is_some() {
                keys.extend(["algorithm", "recipients"]);
            }
        }
        keys
    }

    fn value<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        let envelope = self.facts.envelope();
        let encryption = envelope.and_then(|e| e.encryption.as_ref());
        let v = match key {
            "protection" => self.protection().into_pyobject(py)?.into_any(),
            "damage" => self.damage.clone().into_pyobject(py)?.into_any(),
            "tensors" => self.tensors(py)?.into_any(),
            "metadata" => self.metadata(py)?.into_any(),
            "signer" => self.signer().into_pyobject(py)?.into_any(),
            "format_version" if envelope.is_some() => self.format_version().into_pyobject(py)?,
            "segment_size" if envelope.is_some() => self.segment_size().into_pyobject(py)?,
            "policy" if envelope.is_some() => self.policy().into_pyobject(py)?,
            "algorithm" if encryption.is_some() => self.algorithm().into_pyobject(py)?,
            "recipients" if encryption.is_some() => self.recipients(py)?.into_any(),
            _ => return Ok(None),
        };
        Ok(Some(v))
    }

    fn dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for k in self.keys_present() {
            out.set_item(k, self.value(py, k)?)?;
        }
        Ok(out)
    }
}

#[pymethods]
impl Inspection {
    /// "plain", "signed" or "encrypted" (fail closed: a damaged or unknown
    /// envelope still counts as protected; a 0.2.3 file is "encrypted").
    #[getter]
    fn protection(&self) -> &'static str {
        self.facts.protection().name()
    }

    /// Why the header, envelope or data length was not understood; None
    /// for a file that was.
    #[getter]
    fn damage(&self) -> Option<String> {
        self.damage.clone()
    }

    /// Whether this is a file of cryptotensors 0.2.3 (migrate it).
    #[getter]
    fn legacy(&self) -> bool {
        self.facts.is_legacy()
    }

    /// Each tensor as a dict: name, dtype, shape, nbytes, encrypted.
    #[getter]
    fn tensors<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for t in self.facts.tensors() {
            let d = PyDict::new(py);
            d.set_item("name", &t.name)?;
            d.set_item("dtype", t.dtype.name())?;
            d.set_item("shape", t.shape.clone())?;
            d.set_item("nbytes", t.nbytes)?;
            d.set_item("encrypted", t.encrypted)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// The user metadata (keys not reserved to the format).
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (k, v) in self.facts.metadata() {
            out.set_item(k, v)?;
        }
        Ok(out)
    }

    /// The kid the signature names, not verified.
    #[getter]
    fn signer(&self) -> Option<&str> {
        self.facts.signer()
    }

    #[getter]
    fn format_version(&self) -> Option<u32> {
        self.facts.envelope().map(|e| e.version)
    }

    #[getter]
    fn segment_size(&self) -> Option<usize> {
        self.facts.envelope().map(|e| e.segment_size)
    }

    #[getter]
    fn policy(&self) -> Option<&str> {
        self.facts.envelope().and_then(|e| e.policy.as_deref())
    }

    #[getter]
    fn algorithm(&self) -> Option<&str> {
        self.facts
            .envelope()
            .and_then(|e| e.encryption.as_ref())
            .map(|e| e.algorithm.as_str())
    }

    /// The recipient stanzas, whole (public values only): key providers
    /// get every member, also of a stanza of an unknown alg.
    #[getter]
    fn recipients<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let loads = py.import("json")?.getattr("loads")?;
        let out = PyList::empty(py);
        for r in self.facts.recipients() {
            out.append(loads.call1((r.to_json(),))?)?;
        }
        Ok(out)
    }

    /// Raises the error behind `damage` (the class and message that
    /// reading the damaged part raises); returns None for an undamaged file.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        match &self.error {
            Some(e) => Err(PyErr::from_value(e.bind(py).clone().into_any())),
            None => Ok(()),
        }
    }

    /// A plain dict of the mapping (JSON-serializable).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.dict(py)
    }

    fn keys(&self) -> Vec<&'static str> {
        self.keys_present()
    }

    fn values<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        self.keys_present()
            .into_iter()
            .map(|k| Ok(self.value(py, k)?.expect("a present key")))
            .collect()
    }

    fn items<'py>(&self, py: Python<'py>) -> PyResult<Vec<(&'static str, Bound<'py, PyAny>)>> {
        self.keys_present()
            .into_iter()
            .map(|k| Ok((k, self.value(py, k)?.expect("a present key"))))
            .collect()
    }

    #[pyo3(signature = (key, default=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        Ok(match key.extract::<String>() {
            Ok(k) => self.value(py, &k)?.or(default),
            Err(_) => default,
        })
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let found = match key.extract::<String>() {
            Ok(k) => self.value(py, &k)?,
            Err(_) => None,
        };
        found.ok_or_else(|| PyKeyError::new_err(key.clone().unbind()))
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> bool {
        key.extract::<String>()
            .is_ok_and(|k| self.keys_present().contains(&k.as_str()))
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(PyList::new(py, self.keys_present())?
            .as_any()
            .try_iter()?
            .into_any())
    }

    fn __len__(&self) -> usize {
        self.keys_present().len()
    }

    /// Equal to another inspection, or to a dict, with the same mapping.
    fn __eq__<'py>(&self, py: Python<'py>, other: &Bound<'py, PyAny>) -> PyResult<PyObject> {
        let theirs = if let Ok(o) = other.downcast::<Inspection>() {
            o.get().dict(py)?.into_any()
        } else if other.is_instance_of::<PyDict>() {
            other.clone()
        } else {
            return Ok(py.NotImplemented());
        };
        Ok(self
            .dict(py)?
            .eq(theirs)?
            .into_pyobject(py)?
            .into_bound()
            .into_any()
            .unbind())
    }

    /// Counts and public names only.
    fn __repr__(&self) -> String {
        let kids: Vec<&str> = self
            .facts
            .recipients()
            .iter()
            .map(|r| r.kid.as_str())
            .collect();
        format!(
            "Inspection(protection={:?}, damage={}, tensors={}, recipients={:?}, signer={:?})",
            self.protection(),
            match &self.damage {
                Some(d) => format!("{d:?}"),
                None => "None".into(),
            },
            self.facts.tensors().len(),
            kids,
            self.signer(),
        )
    }
}

/// Adds the class, registered as a `collections.abc.Mapping`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Inspection>()?;
    let mapping = m.py().import("collections.abc")?.getattr("Mapping")?;
    mapping.call_method1("register", (m.getattr("Inspection")?,))?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(protection, m)?)?;
    Ok(())
}
