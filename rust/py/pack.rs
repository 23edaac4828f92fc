//! Qdrant request packing for Python: arrays are borrowed without copying,
//! payload dicts become `Value` trees under the GIL (once per document in the
//! columnar form), and the encoding runs detached in qflume's pool.

use super::error::{invalid_input, invalid_type, new_err, shape_error};
use super::threads::{detach_parallel, guarded};
use super::CoreErrorExt;
use crate::core::hash::HASH_LEN;
use crate::core::pack::{
    pack_delete as core_pack_delete, pack_delete_by_field, pack_set_payload as core_set_payload,
    plan_upsert, ChunkColumns, Ordering, Payloads, Points, RequestOptions, SparseCsr, Value,
    CHUNK_KEYS, DEFAULT_MAX_BYTES, DEFAULT_MAX_POINTS, HARD_LIMIT_BYTES, METADATA_KEY, TEXT_KEY,
};
use numpy::ndarray::Dimension;
use numpy::{
    Element, Ix1, Ix2, PyReadonlyArray, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use rayon::prelude::*;

/// Nesting deeper than this is refused (it is a cycle or not a payload).
const MAX_DEPTH: usize = 64;

fn err_shape(py: Python<'_>, msg: String) -> PyErr {
    new_err(shape_error(py), msg)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

fn describe(obj: &Bound<'_, PyAny>) -> String {
    let dtype = obj
        .getattr("dtype")
        .and_then(|d| d.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| type_name(obj));
    let shape = obj
        .getattr("shape")
        .and_then(|s| s.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| "?".into());
    format!("{dtype} array of shape {shape}")
}

/// Borrows `obj` as a `D`-dimensional numpy array of `T` (`dtype`); `name` names it in errors.
fn array<'py, T: Element, D: Dimension>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dtype: &str,
) -> PyResult<PyReadonlyArray<'py, T, D>> {
    obj.extract::<PyReadonlyArray<'py, T, D>>().map_err(|_| {
        err_shape(
            obj.py(),
            format!(
                "{name} must be a {}-d {dtype} numpy array, got {}",
                D::NDIM.unwrap_or(0),
                describe(obj)
            ),
        )
    })
}

/// The elements of a C-contiguous array in order.
fn slice<'a, T: Element, D: Dimension>(
    a: &'a PyReadonlyArray<'_, T, D>,
    name: &str,
) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| {
        err_shape(
            a.py(),
            format!("{name} must be C-contiguous (np.ascontiguousarray)"),
        )
    })
}

/// Borrows ids as n * 16 bytes, checking the (n, 16) shape.
fn ids_array<'py>(obj: &Bound<'py, PyAny>) -> PyResult<PyReadonlyArray2<'py, u8>> {
    let a = array::<u8, Ix2>(obj, "ids", "uint8")?;
    let shape = a.shape();
    if shape[1] != HASH_LEN {
        return Err(err_shape(
            obj.py(),
            format!(
                "ids must have shape (n, {HASH_LEN}) (UUID bytes), got ({}, {})",
                shape[0], shape[1]
            ),
        ));
    }
    Ok(a)
}

/// A Python value as a payload `Value`; the error carries the path to the bad value.
fn to_value(obj: &Bound<'_, PyAny>, depth: usize) -> Result<Value, (String, String)> {
    if depth > MAX_DEPTH {
        return Err((
            String::new(),
            format!("nested more than {MAX_DEPTH} levels deep (a cycle?)"),
        ));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return s
            .to_str()
            .map(|s| Value::Str(s.to_owned()))
            .map_err(|e| (String::new(), format!("string is not valid UTF-8 ({e})")));
    }
    if obj.is_instance_of::<PyInt>() {
        return obj.extract::<i64>().map(Value::Int).map_err(|_| {
            (
                String::new(),
                format!("integer {obj} does not fit a signed 64-bit payload integer"),
            )
        });
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Value::Double(f.value()));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        return dict_fields(d, depth + 1).map(Value::Struct);
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut items = Vec::with_capacity(obj.len().unwrap_or(0));
        let iter = obj.try_iter().map_err(|e| (String::new(), e.to_string()))?;
        for (i, item) in iter.enumerate() {
            let item = item.map_err(|e| (String::new(), e.to_string()))?;
            items.push(to_value(&item, depth + 1).map_err(|(p, m)| (format!("[{i}]{p}"), m))?);
        }
        return Ok(Value::List(items));
    }
    // numpy scalars and other number-likes.
    let ty = obj.get_type();
    if ty.name().is_ok_and(|n| n == "bool" || n == "bool_") {
        // numpy.bool (it is neither a Python bool nor an int).
        if let Ok(b) = obj.is_truthy() {
            return Ok(Value::Bool(b));
        }
    }
    if ty.hasattr("__index__").unwrap_or(false) {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::Int(i));
        }
    }
    if ty.hasattr("__float__").unwrap_or(false) {
        if let Ok(f) = obj.extract::<f64>() {
            return Ok(Value::Double(f));
        }
    }
    if let Ok(items) = obj.call_method0("items") {
        let d = PyDict::new(obj.py());
        if d.call_method1("update", (items,)).is_ok() {
            return dict_fields(&d, depth + 1).map(Value::Struct);
        }
    }
    let name = ty.name().map(|n| n.to_string()).unwrap_or_default();
    Err((
        String::new(),
        format!("unsupported payload type {name} (use str, int, float, bool, None, list or dict)"),
    ))
}

fn dict_fields(
    d: &Bound<'_, PyDict>,
    depth: usize,
) -> Result<Vec<(String, Value)>, (String, String)> {
    let mut out = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        let key = match k.cast::<PyString>() {
            Ok(s) => s
                .to_str()
                .map_err(|e| (String::new(), format!("key is not valid UTF-8 ({e})")))?
                .to_owned(),
            Err(_) => {
                return Err((
                    String::new(),
                    format!(
                        "payload keys must be str, got {}",
                        k.repr().map(|r| r.to_string()).unwrap_or_default()
                    ),
                ))
            }
        };
        let value = to_value(&v, depth).map_err(|(p, m)| (format!(".{key}{p}"), m))?;
        out.push((key, value));
    }
    Ok(out)
}

/// A mapping (dict or anything with `items()`) as payload fields; `what` names it in errors.
fn mapping_fields(
    obj: &Bound<'_, PyAny>,
    what: &dyn Fn() -> String,
) -> PyResult<Vec<(String, Value)>> {
    let owned;
    let d = match obj.cast::<PyDict>() {
        Ok(d) => d,
        Err(_) => {
            owned = PyDict::new(obj.py());
            let items = obj.call_method0("items").map_err(|_| {
                new_err(
                    invalid_type(obj.py()),
                    format!("{} must be a dict, got {}", what(), type_name(obj)),
                )
            })?;
            owned.call_method1("update", (items,))?;
            &owned
        }
    };
    dict_fields(d, 1).map_err(|(path, msg)| {
        super::error::to_pyerr(
            obj.py(),
            crate::core::CoreError::InvalidArgument(format!(
                "{}: {}: {msg}",
                what(),
                if path.is_empty() {
                    "value".into()
                } else {
                    path.trim_start_matches('.').to_string()
                }
            )),
        )
    })
}

fn sequence_of_fields(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<Vec<(String, Value)>>> {
    let mut out = Vec::with_capacity(obj.len().unwrap_or(0));
    let items = obj.try_iter().map_err(|_| {
        new_err(
            invalid_type(obj.py()),
            format!(
                "{what}s must be a sequence of dicts, got {}",
                type_name(obj)
            ),
        )
    })?;
    for (i, item) in items.enumerate() {
        out.push(mapping_fields(&item?, &|| format!("{what} {i}"))?);
    }
    Ok(out)
}

/// The request options shared by every `pack_*` function, from their keyword arguments
/// (an unknown `ordering` raises the matching Python exception).
fn options(
    py: Python<'_>,
    collection: &str,
    wait: Option<bool>,
    ordering: Option<&str>,
    max_bytes: usize,
    max_points: usize,
    hard_limit: usize,
) -> PyResult<RequestOptions> {
    let mut o = RequestOptions::new(collection);
    o.wait = wait;
    o.ordering = ordering.map(Ordering::parse).transpose().py_err(py)?;
    o.max_bytes = max_bytes;
    o.max_points = max_points;
    o.hard_limit = hard_limit;
    Ok(o)
}

fn to_list<'py>(py: Python<'py>, msgs: Vec<Vec<u8>>) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, msgs.iter().map(|m| PyBytes::new(py, m)))
}

/// A required argument of the columnar payload form.
fn need<'a, 'py>(
    py: Python<'py>,
    o: Option<&'a Bound<'py, PyAny>>,
    name: &str,
) -> PyResult<&'a Bound<'py, PyAny>> {
    o.filter(|x| !x.is_none()).ok_or_else(|| {
        new_err(
            invalid_type(py),
            format!("texts needs {name} as well (the columnar payload form)"),
        )
    })
}

struct SparseArrays<'py> {
    name: String,
    indptr: PyReadonlyArray1<'py, i64>,
    indices: PyReadonlyArray1<'py, u32>,
    values: PyReadonlyArray1<'py, f32>,
}

fn sparse_arrays<'py>(sparse: Option<&Bound<'py, PyAny>>) -> PyResult<Vec<SparseArrays<'py>>> {
    let Some(sparse) = sparse else {
        return Ok(Vec::new());
    };
    let py = sparse.py();
    let not_a_mapping = || {
        new_err(
            invalid_type(py),
            format!(
                "sparse must be a dict of vector name -> SparseBatch, got {}",
                type_name(sparse)
            ),
        )
    };
    let not_csr = |name: &str| {
        new_err(
            invalid_type(py),
            format!("sparse[{name:?}] must be (indptr, indices, values) or a SparseBatch"),
        )
    };
    let mut out = Vec::new();
    let items = sparse
        .call_method0("items")
        .and_then(|i| i.try_iter())
        .map_err(|_| not_a_mapping())?;
    for item in items {
        let (name, csr): (String, Bound<'py, PyAny>) =
            item?.extract().map_err(|_| not_a_mapping())?;
        let (indptr, indices, values) = if let Ok(t) = csr.cast::<PyTuple>() {
            if t.len() != 3 {
                return Err(not_csr(&name));
            }
            (t.get_item(0)?, t.get_item(1)?, t.get_item(2)?)
        } else {
            let field = |f: &str| csr.getattr(f).map_err(|_| not_csr(&name));
            (field("indptr")?, field("indices")?, field("values")?)
        };
        out.push(SparseArrays {
            indptr: array(&indptr, &format!("sparse[{name:?}].indptr"), "int64")?,
            indices: array(&indices, &format!("sparse[{name:?}].indices"), "uint32")?,
            values: array(&values, &format!("sparse[{name:?}].values"), "float32")?,
            name,
        });
    }
    Ok(out)
}

/// Serialized `qdrant.UpsertPoints` messages (bytes), split by `max_bytes` / `max_points`.
#[pyfunction]
#[pyo3(signature = (
    collection, ids, dense=None, *, sparse=None, payloads=None, texts=None, doc_index=None,
    doc_metadata=None, chunk_index=None, start=None, end=None, chunk_hash=None, wait=None,
    ordering=None, max_bytes=8388608, max_points=256,
    hard_limit=33554432, return_counts=false
))]
#[allow(clippy::too_many_arguments)]
fn pack_upsert<'py>(
    py: Python<'py>,
    collection: &str,
    ids: &Bound<'py, PyAny>,
    dense: Option<&Bound<'py, PyAny>>,
    sparse: Option<&Bound<'py, PyAny>>,
    payloads: Option<&Bound<'py, PyAny>>,
    texts: Option<Vec<PyBackedStr>>,
    doc_index: Option<&Bound<'py, PyAny>>,
    doc_metadata: Option<&Bound<'py, PyAny>>,
    chunk_index: Option<&Bound<'py, PyAny>>,
    start: Option<&Bound<'py, PyAny>>,
    end: Option<&Bound<'py, PyAny>>,
    chunk_hash: Option<&Bound<'py, PyAny>>,
    wait: Option<bool>,
    ordering: Option<&str>,
    max_bytes: usize,
    max_points: usize,
    hard_limit: usize,
    return_counts: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let opts = options(
        py, collection, wait, ordering, max_bytes, max_points, hard_limit,
    )?;
    let ids_a = ids_array(ids)?;
    let ids_s = slice(&ids_a, "ids")?;
    let n = ids_s.len() / HASH_LEN;

    let dense_a = dense
        .filter(|d| !d.is_none())
        .map(|d| array::<f32, Ix2>(d, "dense", "float32"))
        .transpose()?;
    let dense_s = match &dense_a {
        Some(a) => Some((slice(a, "dense")?, a.shape()[1])),
        None => None,
    };
    if let Some(a) = &dense_a {
        let shape = a.shape();
        if shape[0] != n {
            return Err(err_shape(
                py,
                format!(
                    "dense has {} rows (dim {}) but there are {n} ids",
                    shape[0], shape[1]
                ),
            ));
        }
        if shape[1] == 0 {
            return Err(err_shape(py, "dense vectors have dimension 0".into()));
        }
    }

    let sparse_a = sparse_arrays(sparse.filter(|s| !s.is_none()))?;
    let mut sparse_s = Vec::with_capacity(sparse_a.len());
    for s in &sparse_a {
        sparse_s.push(SparseCsr {
            name: &s.name,
            indptr: slice(&s.indptr, "sparse indptr")?,
            indices: slice(&s.indices, "sparse indices")?,
            values: slice(&s.values, "sparse values")?,
        });
    }

    let dicts;
    let docs;
    let columns;
    let payload_mode = match (payloads.filter(|p| !p.is_none()), &texts) {
        (Some(_), Some(_)) => {
            return Err(new_err(
                invalid_type(py),
                "give either payloads or the columnar texts/doc_metadata form, not both",
            ))
        }
        (Some(p), None) => {
            dicts = sequence_of_fields(p, "payload of point")?;
            Payloads::Dicts(&dicts)
        }
        (None, Some(t)) => {
            docs = sequence_of_fields(
                need(py, doc_metadata, "doc_metadata")?,
                "doc_metadata of document",
            )?;
            let di = array::<i64, Ix1>(need(py, doc_index, "doc_index")?, "doc_index", "int64")?;
            let ci = array::<i64, Ix1>(
                need(py, chunk_index, "chunk_index")?,
                "chunk_index",
                "int64",
            )?;
            let st = array::<i64, Ix1>(need(py, start, "start")?, "start", "int64")?;
            let en = array::<i64, Ix1>(need(py, end, "end")?, "end", "int64")?;
            let ch = array::<u8, Ix2>(need(py, chunk_hash, "chunk_hash")?, "chunk_hash", "uint8")?;
            columns = (di, ci, st, en, ch);
            Payloads::Chunks(ChunkColumns {
                texts: t.as_slice(),
                doc_index: slice(&columns.0, "doc_index")?,
                docs: &docs,
                chunk_index: slice(&columns.1, "chunk_index")?,
                start: slice(&columns.2, "start")?,
                end: slice(&columns.3, "end")?,
                chunk_hash: slice(&columns.4, "chunk_hash")?,
            })
        }
        (None, None) => Payloads::None,
    };

    let points = Points {
        ids: ids_s,
        dense: dense_s,
        sparse: sparse_s,
        payloads: payload_mode,
    };
    let plan = detach_parallel(py, || plan_upsert(&points, &opts))?.py_err(py)?;
    // The final `bytes` objects are allocated first and filled in place, detached:
    // the messages are written once, into memory touched once.
    let sizes = plan.message_sizes();
    let mut outs = Vec::with_capacity(sizes.len());
    let mut targets = Vec::with_capacity(sizes.len());
    for &size in &sizes {
        let (bytes, target) = uninit_bytes(py, size)?;
        outs.push(bytes);
        targets.push(target);
    }
    detach_parallel(py, || {
        targets
            .into_par_iter()
            .enumerate()
            .try_for_each(|(m, target)| {
                // SAFETY: `target` points at the `size`-byte buffer of a bytes
                // object created above, which `outs` keeps alive until after
                // this closure returns; no Python code has seen it yet, and
                // each buffer is handed to exactly one task.
                let buf = unsafe { std::slice::from_raw_parts_mut(target.0, target.1) };
                plan.write(m, buf)
            })
    })?
    .py_err(py)?;
    let list = PyList::new(py, outs)?.into_any();
    if return_counts {
        Ok((list, plan.message_points()).into_pyobject(py)?.into_any())
    } else {
        Ok(list)
    }
}

/// A bytes object's writable buffer, sent to the thread that fills it.
struct RawTarget(*mut u8, usize);
// SAFETY: the buffer is owned by a fresh bytes object that no other thread
// touches until the filling task is done (see `pack_upsert`).
unsafe impl Send for RawTarget {}

/// A new `bytes` object of `size` uninitialized bytes, and its buffer.
fn uninit_bytes(py: Python<'_>, size: usize) -> PyResult<(Bound<'_, PyBytes>, RawTarget)> {
    let len = ffi::Py_ssize_t::try_from(size).map_err(|_| {
        new_err(
            invalid_input(py),
            format!("message of {size} bytes is too large"),
        )
    })?;
    // SAFETY: PyBytes_FromStringAndSize(NULL, len) returns a new reference to
    // a bytes object with `len` uninitialized bytes (or NULL with an error
    // set); PyBytes_AsString returns its internal buffer, valid while the
    // object lives. The object is not shared before it is filled.
    unsafe {
        let obj = ffi::PyBytes_FromStringAndSize(std::ptr::null(), len);
        let obj = Bound::from_owned_ptr_or_err(py, obj)?.cast_into_unchecked::<PyBytes>();
        let ptr = ffi::PyBytes_AsString(obj.as_ptr());
        if ptr.is_null() {
            return Err(PyErr::fetch(py));
        }
        Ok((obj, RawTarget(ptr.cast::<u8>(), size)))
    }
}

/// Defines a `pack_*` function that takes, after its own arguments, the request keyword
/// arguments `wait`, `ordering`, `max_bytes` and `max_points` (default `$max_points`), and
/// returns the messages `$body` packs with them (`$opts`) as a list of `bytes`.
macro_rules! pack_fn {
    (
        $(#[$attr:meta])*
        fn $name:ident($py:ident, $collection:ident, $($arg:ident: $ty:ty),+)
        signature = ($($sig:tt)+), max_points = $max_points:tt,
        |$opts:ident| $body:block
    ) => {
        $(#[$attr])*
        #[pyfunction]
        #[pyo3(signature = (
            $collection, $($sig)+, wait=None, ordering=None, max_bytes=8388608,
            max_points=$max_points
        ))]
        #[allow(clippy::too_many_arguments)]
        fn $name<'py>(
            $py: Python<'py>,
            $collection: &str,
            $($arg: $ty,)+
            wait: Option<bool>,
            ordering: Option<&str>,
            max_bytes: usize,
            max_points: usize,
        ) -> PyResult<Bound<'py, PyList>> {
            let $opts = options(
                $py,
                $collection,
                wait,
                ordering,
                max_bytes,
                max_points,
                HARD_LIMIT_BYTES,
            )?;
            let msgs: Vec<Vec<u8>> = $body;
            to_list($py, msgs)
        }
    };
}

pack_fn! {
    /// Serialized `qdrant.DeletePoints` messages deleting the points `ids` ((n, 16) uint8).
    fn pack_delete(py, collection, ids: &Bound<'py, PyAny>)
    signature = (ids, *), max_points = 4096,
    |opts| {
        let a = ids_array(ids)?;
        let ids = slice(&a, "ids")?;
        guarded(py, || core_pack_delete(ids, &opts))?.py_err(py)?
    }
}

pack_fn! {
    /// Serialized `qdrant.DeletePoints` messages deleting every point whose payload
    /// field `key` is one of `values` (a keyword "match any" filter).
    fn pack_delete_by_values(py, collection, values: Vec<PyBackedStr>, key: &str)
    signature = (values, *, key="metadata.source"), max_points = 1024,
    |opts| {
        guarded(py, || pack_delete_by_field(key, &values, &opts))?.py_err(py)?
    }
}

pack_fn! {
    /// Serialized `qdrant.SetPayloadPoints` messages merging `payload` into the points `ids`.
    fn pack_set_payload(
        py,
        collection,
        payload: &Bound<'py, PyAny>,
        ids: &Bound<'py, PyAny>,
        key: Option<&str>
    )
    signature = (payload, ids, *, key=None), max_points = 4096,
    |opts| {
        let fields = mapping_fields(payload, &|| "payload".to_string())?;
        let a = ids_array(ids)?;
        let ids = slice(&a, "ids")?;
        guarded(py, || core_set_payload(&fields, ids, key, &opts))?.py_err(py)?
    }
}

// The Python signatures spell the defaults out (stubtest compares them).
const _: () = assert!(DEFAULT_MAX_BYTES == 8388608);
const _: () = assert!(DEFAULT_MAX_POINTS == 256);
const _: () = assert!(HARD_LIMIT_BYTES == 33554432);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(pack_upsert, m)?)?;
    m.add_function(wrap_pyfunction!(pack_delete, m)?)?;
    m.add_function(wrap_pyfunction!(pack_delete_by_values, m)?)?;
    m.add_function(wrap_pyfunction!(pack_set_payload, m)?)?;
    // The chunk payload layout the packer writes (qflume.payload checks it matches).
    m.add(
        "PAYLOAD_KEYS",
        PyTuple::new(m.py(), [TEXT_KEY, METADATA_KEY])?,
    )?;
    m.add("CHUNK_KEYS", PyTuple::new(m.py(), CHUNK_KEYS)?)?;
    Ok(())
}
