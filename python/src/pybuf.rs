//! [`ByteView`]: the bytes of any contiguous bytes-like Python object (`bytes`,
//! `bytearray`, `memoryview`, numpy arrays, ...), read in place so a put copies the
//! value once, straight into the store, with the GIL released.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;

/// A held buffer export (`PyObject_GetBuffer(PyBUF_SIMPLE)`), released on drop.
pub struct ByteView {
    view: Box<ffi::Py_buffer>,
}

// SAFETY: the exporter keeps the memory valid and in place until the view is
// released (which `Drop` does with the GIL held); the view is only read through.
unsafe impl Send for ByteView {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for ByteView {}

impl ByteView {
    /// Exports the bytes of `obj`; a `TypeError` when it is not a contiguous
    /// bytes-like object.
    pub fn new(obj: &Bound<'_, PyAny>) -> PyResult<ByteView> {
        // SAFETY: `Py_buffer` is a plain C struct for which all-zero is a valid
        // (empty) value; `PyObject_GetBuffer` fills it in.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `obj` is a live object (the GIL is held through `Bound`) and `view`
        // points to writable storage that outlives the export.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_SIMPLE) };
        if rc != 0 {
            let cause = PyErr::take(obj.py());
            let err = PyTypeError::new_err(format!(
                "expected a contiguous bytes-like object, got {}",
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "?".into())
            ));
            if let Some(c) = cause {
                err.set_cause(obj.py(), Some(c));
            }
            return Err(err);
        }
        Ok(ByteView { view })
    }

    /// The exported bytes.
    pub fn as_slice(&self) -> &[u8] {
        if self.view.buf.is_null() || self.view.len <= 0 {
            return &[];
        }
        // SAFETY: a successful PyBUF_SIMPLE export describes `len` contiguous bytes at
        // `buf`, valid until the export is released in `Drop` (after every borrow of
        // `self` ended).
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.view.len as usize) }
    }
}

impl Drop for ByteView {
    fn drop(&mut self) {
        Python::attach(|_| {
            // SAFETY: the view was filled by a successful `PyObject_GetBuffer` and is
            // released exactly once, with the GIL held.
            unsafe { ffi::PyBuffer_Release(&mut *self.view) }
        });
    }
}
