//! Memory crosses the boundary as Python buffers, never as integer
//! addresses. This is the binding's only raw-pointer code.
//!
//! A [`WriteBuffer`] or [`ReadBuffer`] holds a buffer export (PEP 3118) of
//! a Python object (a numpy array, a bytearray, a torch tensor's
//! `.numpy()` view, a pinned staging buffer) for as long as it lives. While
//! the export is held the exporter keeps the memory where it is: a
//! bytearray with an exported buffer cannot be resized, a numpy array
//! cannot be resized in place, and the object itself stays referenced. So
//! the slices handed to the core stay valid for the whole call, even with
//! the GIL released while another thread holds the object.
//!
//! pyo3-ffi declares the buffer API only for abi3-py311 and later, where it
//! joined the limited API. The functions and the `Py_buffer` layout below
//! are those every CPython 3 exports (the layout the stable ABI froze in
//! 3.11 is the one of 3.3 onwards), so they are declared here for the
//! abi3-py39 floor. The extension is built for Linux only (see
//! pyproject.toml), where an abi3 module resolves them from the running
//! interpreter.

use std::ffi::{c_char, c_int, c_void};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

/// CPython's `Py_buffer` (Include/pybuffer.h).
#[repr(C)]
struct RawView {
    buf: *mut c_void,
    obj: *mut ffi::PyObject,
    len: ffi::Py_ssize_t,
    itemsize: ffi::Py_ssize_t,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut ffi::Py_ssize_t,
    strides: *mut ffi::Py_ssize_t,
    suboffsets: *mut ffi::Py_ssize_t,
    internal: *mut c_void,
}

extern "C" {
    fn PyObject_GetBuffer(obj: *mut ffi::PyObject, view: *mut RawView, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut RawView);
}

// Request flags (Include/pybuffer.h). No PyBUF_FORMAT: the bytes are taken
// as bytes whatever the exporter's element type.
const PYBUF_WRITABLE: c_int = 0x0001;
const PYBUF_ND: c_int = 0x0008;
const PYBUF_STRIDES: c_int = 0x0010 | PYBUF_ND;
const PYBUF_C_CONTIGUOUS: c_int = 0x0020 | PYBUF_STRIDES;

/// One held buffer export; released (with the GIL, which `'py` proves is
/// held, as the type is not `Send`) when dropped.
struct View<'py> {
    // Boxed and never moved: an exporter may keep the view's address.
    raw: Box<RawView>,
    len: usize,
    _py: Python<'py>,
}

impl<'py> View<'py> {
    fn get(obj: &Bound<'py, PyAny>, flags: c_int, what: &str) -> PyResult<View<'py>> {
        let py = obj.py();
        let mut raw = Box::new(RawView {
            buf: std::ptr::null_mut(),
            obj: std::ptr::null_mut(),
            len: 0,
            itemsize: 0,
            readonly: 0,
            ndim: 0,
            format: std::ptr::null_mut(),
            shape: std::ptr::null_mut(),
            strides: std::ptr::null_mut(),
            suboffsets: std::ptr::null_mut(),
            internal: std::ptr::null_mut(),
        });
        // SAFETY: `obj` is a live object (we hold a reference and the GIL),
        // and `raw` is a writable Py_buffer that outlives the export.
        if unsafe { PyObject_GetBuffer(obj.as_ptr(), &mut *raw, flags) } != 0 {
            let err = PyErr::take(py).unwrap_or_else(|| PyValueError::new_err("no buffer"));
            let kind = if flags & PYBUF_WRITABLE != 0 {
                "a writable, C-contiguous buffer"
            } else {
                "a C-contiguous buffer"
            };
            let ours = if err.is_instance_of::<PyTypeError>(py) {
                PyTypeError::new_err(format!(
                    "{what}: expected {kind} (a numpy array, bytearray...), not '{}'",
                    obj.get_type()
                        .name()
                        .map_or_else(|_| "?".into(), |n| n.to_string())
                ))
            } else {
                PyValueError::new_err(format!("{what}: expected {kind}"))
            };
            ours.set_cause(py, Some(err));
            return Err(ours);
        }
        // From here on the export is released on every path, by Drop.
        let mut view = View {
            raw,
            len: 0,
            _py: py,
        };
        // A conforming exporter gives len >= 0 (so at most isize::MAX) and
        // memory behind a non-null pointer; anything else is refused.
        match usize::try_from(view.raw.len) {
            Ok(len) if len == 0 || !view.raw.buf.is_null() => {
                view.len = len;
                Ok(view)
            }
            _ => Err(PyValueError::new_err(format!(
                "{what}: the object exported an invalid buffer"
            ))),
        }
    }
}

impl Drop for View<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` holds an export obtained by PyObject_GetBuffer and
        // not yet released; the GIL is held (see `View`).
        unsafe { PyBuffer_Release(&mut *self.raw) }
    }
}

/// The bytes of a writable, C-contiguous Python buffer, for output.
pub struct WriteBuffer<'py>(View<'py>);

impl<'py> WriteBuffer<'py> {
    /// Takes a writable, C-contiguous export of `obj` (`what` names it in
    /// errors): TypeError if `obj` has no buffer, ValueError if it is
    /// read-only or not C-contiguous.
    pub fn new(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        let view = View::get(obj, PYBUF_WRITABLE | PYBUF_C_CONTIGUOUS, what)?;
        // An exporter must refuse a writable request for read-only memory;
        // one that grants it anyway is not believed.
        if view.raw.readonly != 0 {
            return Err(PyValueError::new_err(format!(
                "{what}: expected a writable, C-contiguous buffer"
            )));
        }
        Ok(WriteBuffer(view))
    }

    /// The buffer's bytes, for the core to fill.
    pub fn bytes(&mut self) -> &mut [u8] {
        if self.0.len == 0 {
            return &mut [];
        }
        // SAFETY: the export is held while `self` lives (so the memory
        // neither moves nor is freed), it was requested writable and
        // C-contiguous, so `buf` points to `len` writable bytes in one
        // block; `len` fits an isize (it came from one). `&mut self`
        // keeps Rust from taking a second view of them. Another Python
        // thread writing the same object meanwhile would race on plain
        // bytes, as with any buffer handed to code that releases the GIL;
        // the Python layer passes freshly allocated outputs only.
        unsafe { std::slice::from_raw_parts_mut(self.0.raw.buf.cast::<u8>(), self.0.len) }
    }
}

/// The bytes of a C-contiguous Python buffer, for input.
pub struct ReadBuffer<'py>(View<'py>);

impl<'py> ReadBuffer<'py> {
    /// Takes a C-contiguous export of `obj` (`what` names it in errors):
    /// TypeError if `obj` has no buffer, ValueError if not C-contiguous.
    pub fn new(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        View::get(obj, PYBUF_C_CONTIGUOUS, what).map(ReadBuffer)
    }

    /// The buffer's bytes.
    pub fn bytes(&self) -> &[u8] {
        if self.0.len == 0 {
            return &[];
        }
        // SAFETY: as in `WriteBuffer::bytes`, for `len` readable bytes.
        unsafe { std::slice::from_raw_parts(self.0.raw.buf.cast::<u8>(), self.0.len) }
    }
}
