//! The two raw-pointer contracts of the binding.

/// A writable view of memory owned by a Python object.
///
/// # Safety
/// `ptr` must point to `len` writable bytes of one allocation (a tensor or
/// array that the Python layer allocated for this call), which no other
/// code reads or writes until the returned slice is dropped, and which
/// outlives the call. `ptr` may be dangling only when `len == 0`.
pub unsafe fn out_slice<'a>(ptr: usize, len: usize) -> &'a mut [u8] {
    if len == 0 {
        return &mut [];
    }
    // SAFETY: guaranteed by the caller, as documented above.
    unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) }
}

/// A read-only view of memory owned by a Python object.
///
/// # Safety
/// `ptr` must point to `len` readable bytes of one allocation that the
/// Python layer keeps alive (by holding the owning object) for the whole
/// call, and that is not written during it. `ptr` may be dangling only when
/// `len == 0`.
pub unsafe fn in_slice<'a>(ptr: usize, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: guaranteed by the caller, as documented above.
    unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }
}
