//! The Python binding of cryptotensors: type conversion and GIL release
//! only. All format and crypto logic lives in the `cryptotensors` crate.
//!
//! Raw pointers cross this boundary in two places, both stated once:
//! [`buffer::out_slice`] (a tensor the Python layer just allocated) and
//! [`buffer::in_slice`] (tensor bytes the Python layer keeps alive for the
//! call). The Python package upholds both contracts.

use pyo3::prelude::*;

mod buffer;
mod errors;
mod handle;
mod inspect;
mod keys;
mod write;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<handle::Handle>()?;
    m.add_function(wrap_pyfunction!(write::serialize, m)?)?;
    m.add_function(wrap_pyfunction!(write::rewrap, m)?)?;
    m.add_function(wrap_pyfunction!(write::rekey, m)?)?;
    m.add_function(wrap_pyfunction!(inspect::inspect, m)?)?;
    m.add_function(wrap_pyfunction!(keys::generate_key, m)?)?;
    m.add_function(wrap_pyfunction!(keys::public_key, m)?)?;
    m.add_function(wrap_pyfunction!(keys::key_id, m)?)?;
    m.add(
        "DTYPES",
        cryptotensors::Dtype::all()
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>(),
    )?;
    Ok(())
}
