//! Argument extraction that turns bad values into error codes instead of
//! exceptions: a negative or too-large size or pointer, or a key Python cannot
//! encode (lone surrogates), reaches the store as a value it answers with
//! upstream's code, so calls keep their promise of returning codes. Arguments of
//! the wrong Python type still raise `TypeError`.

use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use pyo3::types::PyString;

/// Stands for a size or pointer outside `0..2^64`: no buffer is that large or
/// registered there, so the store answers `INVALID_PARAMS`.
pub const OUT_OF_RANGE: u64 = u64::MAX;

/// A `u64` argument; out-of-range integers become [`OUT_OF_RANGE`].
pub fn num(ob: &Bound<'_, PyAny>) -> PyResult<u64> {
    match ob.extract::<u64>() {
        Ok(v) => Ok(v),
        Err(e) if e.is_instance_of::<PyOverflowError>(ob.py()) => Ok(OUT_OF_RANGE),
        Err(e) => Err(e),
    }
}

/// A list of `u64` arguments.
pub fn nums(ob: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
    seq(ob, num)
}

/// A list of lists of `u64` arguments.
pub fn nums2(ob: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u64>>> {
    seq(ob, nums)
}

/// A key; one Python cannot encode as UTF-8 becomes the empty key, which names
/// no object (upstream's answers for it) — never a different, valid key.
pub fn key(ob: &Bound<'_, PyAny>) -> PyResult<String> {
    let s = ob.cast::<PyString>()?;
    Ok(s.to_str().map(str::to_string).unwrap_or_default())
}

/// A list of keys.
pub fn keys(ob: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    seq(ob, key)
}

fn seq<T>(
    ob: &Bound<'_, PyAny>,
    item: impl Fn(&Bound<'_, PyAny>) -> PyResult<T>,
) -> PyResult<Vec<T>> {
    if ob.is_instance_of::<PyString>() {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "expected a list, not a str",
        ));
    }
    ob.try_iter()?.map(|x| item(&x?)).collect()
}
