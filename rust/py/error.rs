//! The one mapping from `CoreError` to the Python exception tree defined in
//! `qflume.exceptions` (imported once, lazily), and `new_err`, which every binding
//! uses to raise one of those classes: no binding raises a bare builtin.

use crate::core::CoreError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use pyo3::PyErrArguments;

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
exc!(invalid_type, "InvalidTypeError");
exc!(state_error, "StateError");
exc!(io_error, "QflumeIOError");
exc!(decode_error, "DecodeError");
exc!(tokenizer_error, "TokenizerError");
exc!(shape_error, "ShapeError");
exc!(rust_panic, "RustPanicError");

/// An error of the `qflume.exceptions` class `ty` (one of the getters above) with
/// `args` (the message): `new_err(invalid_input(py), format!(...))`. Should the class
/// fail to import, that import error is raised instead.
pub(crate) fn new_err<A>(ty: PyResult<&Bound<'_, PyType>>, args: A) -> PyErr
where
    A: PyErrArguments + Send + Sync + 'static,
{
    match ty {
        Ok(ty) => PyErr::from_type(ty.clone(), args),
        Err(e) => e,
    }
}

/// `obj` as `T`, or `InvalidTypeError` naming the argument (`what`) and the type wanted:
/// for arguments PyO3 would otherwise refuse with a bare `TypeError`.
pub(crate) fn arg<'a, 'py, T: FromPyObject<'a, 'py>>(
    obj: &'a Bound<'py, PyAny>,
    what: &str,
    wanted: &str,
) -> PyResult<T> {
    obj.extract::<T>().map_err(|_| {
        let got = obj
            .get_type()
            .name()
            .map(|t| t.to_string())
            .unwrap_or_default();
        new_err(
            invalid_type(obj.py()),
            format!("{what} must be {wanted}, not {got}"),
        )
    })
}

/// Converts a core error into the matching `qflume` exception.
pub(crate) fn to_pyerr(py: Python<'_>, e: CoreError) -> PyErr {
    let msg = e.to_string();
    match e {
        CoreError::InvalidArgument(_) => new_err(invalid_input(py), msg),
        CoreError::Io { source, .. } => {
            let errno = source.raw_os_error().unwrap_or(0);
            new_err(io_error(py), (errno, msg))
        }
        CoreError::Decode { .. } => new_err(decode_error(py), msg),
        CoreError::Tokenizer { .. } => new_err(tokenizer_error(py), msg),
        CoreError::Shape(_) => new_err(shape_error(py), msg),
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
