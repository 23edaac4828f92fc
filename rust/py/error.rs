//! The one mapping from `CoreError` to the Python exception tree defined in
//! `qflume.exceptions` (imported once, lazily).

use crate::core::CoreError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

fn exception_type<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyType>> {
    cell.import(py, "qflume.exceptions", name)
}

macro_rules! exc {
    ($fn_name:ident, $name:literal) => {
        pub(crate) fn $fn_name(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
            static CELL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
            exception_type(py, &CELL, $name)
        }
    };
}

exc!(invalid_input, "InvalidInputError");
exc!(io_error, "QflumeIOError");
exc!(decode_error, "DecodeError");
exc!(tokenizer_error, "TokenizerError");
exc!(shape_error, "ShapeError");
exc!(rust_panic, "RustPanicError");

fn make(ty: PyResult<&Bound<'_, PyType>>, msg: String) -> PyErr {
    match ty {
        Ok(ty) => PyErr::from_type(ty.clone(), msg),
        Err(e) => e,
    }
}

/// Converts a core error into the matching `qflume` exception.
pub(crate) fn to_pyerr(py: Python<'_>, err: CoreError) -> PyErr {
    let msg = err.to_string();
    match err {
        CoreError::InvalidArgument(_) => make(invalid_input(py), msg),
        CoreError::Io { source, .. } => {
            let errno = source.raw_os_error().unwrap_or(0);
            match io_error(py) {
                Ok(ty) => PyErr::from_type(ty.clone(), (errno, msg)),
                Err(e) => e,
            }
        }
        CoreError::Decode { .. } => make(decode_error(py), msg),
        CoreError::Tokenizer { .. } => make(tokenizer_error(py), msg),
        CoreError::Shape(_) => make(shape_error(py), msg),
    }
}

/// `result.py_err(py)?` turns a core result into a Python one.
pub(crate) trait CoreErrorExt<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> CoreErrorExt<T> for Result<T, CoreError> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_pyerr(py, e))
    }
}
