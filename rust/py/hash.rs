//! Content hashes and point ids for Python.

use super::error::shape_error;
use crate::core::hash::{
    content_hash, point_id as core_point_id, point_ids as core_point_ids, uuid_string, HASH_LEN,
};
use crate::py::error::{arg, invalid_input, invalid_type, new_err};
use crate::py::threads::detach;
use crate::py::CoreErrorExt;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString};

/// Inputs under this size are hashed without releasing the GIL: the release
/// costs more than the work.
const GIL_MINSIZE: usize = 2048;

fn hash_slice(py: Python<'_>, data: &[u8]) -> PyResult<[u8; HASH_LEN]> {
    if data.len() < GIL_MINSIZE {
        Ok(content_hash(data))
    } else {
        detach(py, || content_hash(data))
    }
}

/// XXH3-128 of `data` (bytes-like, hashed as is, or str, hashed as UTF-8): 16 bytes.
#[pyfunction(name = "content_hash")]
fn content_hash_of<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    // abi3 for 3.10 has no buffer protocol: bytes are borrowed, other
    // bytes-like objects are copied once through bytes().
    let digest = if let Ok(s) = data.cast::<PyString>() {
        hash_slice(py, s.to_str()?.as_bytes())?
    } else if let Ok(b) = data.cast::<PyBytes>() {
        hash_slice(py, b.as_bytes())?
    } else if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
        let copied = py.get_type::<PyBytes>().call1((data,))?;
        let b = copied.cast::<PyBytes>()?;
        hash_slice(py, b.as_bytes())?
    } else {
        return Err(new_err(
            invalid_type(py),
            format!(
                "content_hash expects str, bytes, bytearray or memoryview, not {}",
                data.get_type().name()?
            ),
        ));
    };
    Ok(PyBytes::new(py, &digest))
}

fn as_hash<'a>(py: Python<'_>, chunk_hash: &'a [u8]) -> PyResult<&'a [u8; HASH_LEN]> {
    chunk_hash.try_into().map_err(|_| {
        new_err(
            invalid_input(py),
            format!(
                "chunk_hash must be {HASH_LEN} bytes (a qflume content hash), got {}",
                chunk_hash.len()
            ),
        )
    })
}

/// The point id (UUID text) of the chunk with `chunk_hash` in document `key`.
#[pyfunction]
fn point_id(key: &Bound<'_, PyAny>, chunk_hash: &Bound<'_, PyAny>) -> PyResult<String> {
    let py = key.py();
    let key: PyBackedStr = arg(key, "point_id: key", "str")?;
    let chunk_hash: PyBackedBytes = arg(chunk_hash, "point_id: chunk_hash", "bytes")?;
    Ok(uuid_string(&core_point_id(
        key.as_bytes(),
        as_hash(py, &chunk_hash)?,
    )))
}

/// The point ids of many chunks of document `key`: `hashes` is bytes of n * 16
/// content hashes, or an (n, 16) uint8 array of them; an (n, 16) uint8 array back.
#[pyfunction]
fn point_ids<'py>(
    py: Python<'py>,
    key: &str,
    hashes: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray2<u8>>> {
    let shape = |msg: String| -> PyErr { new_err(shape_error(py), msg) };
    let ids = if let Ok(b) = hashes.cast::<PyBytes>() {
        core_point_ids(key.as_bytes(), b.as_bytes())
    } else {
        let arr = hashes.extract::<PyReadonlyArray2<'py, u8>>().map_err(|_| {
            shape("hashes must be bytes or an (n, 16) uint8 numpy array".to_string())
        })?;
        let rows = arr.as_array();
        if rows.ncols() != HASH_LEN {
            return Err(shape(format!(
                "hashes must be an (n, {HASH_LEN}) uint8 array, got {} columns",
                rows.ncols()
            )));
        }
        match arr.as_slice() {
            Ok(flat) => core_point_ids(key.as_bytes(), flat),
            Err(_) => core_point_ids(key.as_bytes(), &rows.iter().copied().collect::<Vec<u8>>()),
        }
    }
    .py_err(py)?;
    let n = ids.len() / HASH_LEN;
    Array2::from_shape_vec((n, HASH_LEN), ids)
        .map(|a| a.into_pyarray(py))
        .map_err(|e| shape(e.to_string()))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("HASH_LEN", HASH_LEN)?;
    m.add_function(wrap_pyfunction!(content_hash_of, m)?)?;
    m.add_function(wrap_pyfunction!(point_id, m)?)?;
    m.add_function(wrap_pyfunction!(point_ids, m)?)?;
    Ok(())
}
