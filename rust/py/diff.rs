//! The chunk diff of one document for Python (`qflume.pipeline._DocDiff` drives it).

use crate::core::diff::{Digest, DocDiff, Hash, Row};
use crate::core::hash::HASH_LEN;
use crate::py::error::{new_err, shape_error, state_error};
use crate::py::threads::guarded;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Mutex;

fn fixed<const N: usize>(py: Python<'_>, blob: &[u8], what: &str) -> PyResult<Vec<[u8; N]>> {
    if blob.len() % N != 0 {
        return Err(new_err(
            shape_error(py),
            format!(
                "{what}: {} bytes is not a whole number of {N}-byte entries",
                blob.len()
            ),
        ));
    }
    Ok(blob
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        })
        .collect())
}

fn rows_of(py: Python<'_>, blob: &[u8]) -> PyResult<Vec<Row>> {
    Ok(fixed::<24>(py, blob, "prev_offsets")?
        .into_iter()
        .map(|r| {
            let f = |k: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&r[8 * k..8 * k + 8]);
                i64::from_ne_bytes(b)
            };
            [f(0), f(1), f(2)]
        })
        .collect())
}

type Indices<'py> = Bound<'py, PyArray1<i64>>;

fn indices(py: Python<'_>, v: Vec<u32>) -> Indices<'_> {
    v.into_iter()
        .map(i64::from)
        .collect::<Vec<i64>>()
        .into_pyarray(py)
}

fn hash_array(py: Python<'_>, v: Vec<Hash>) -> Bound<'_, PyArray2<u8>> {
    let n = v.len();
    let flat: Vec<u8> = v.into_iter().flatten().collect();
    match Array2::from_shape_vec((n, HASH_LEN), flat) {
        Ok(a) => a.into_pyarray(py),
        Err(_) => PyArray2::zeros(py, [0, HASH_LEN], false),
    }
}

/// One document's chunk diff, fed block by block; `finish` ends it.
#[pyclass(frozen, name = "DocDiffer", module = "qflume._core")]
pub struct PyDocDiffer {
    inner: Mutex<Option<DocDiff>>,
}

fn busy(py: Python<'_>) -> PyErr {
    new_err(
        state_error(py),
        "DocDiffer is in use by another thread (one document's diff runs on one thread)",
    )
}

fn finished(py: Python<'_>) -> PyErr {
    new_err(
        state_error(py),
        "DocDiffer is finished: make a new one for the next document",
    )
}

impl PyDocDiffer {
    fn with<T>(&self, py: Python<'_>, f: impl FnOnce(&mut DocDiff) -> T) -> PyResult<T> {
        let mut g = self.inner.try_lock().map_err(|_| busy(py))?;
        let d = g.as_mut().ok_or_else(|| finished(py))?;
        Ok(f(d))
    }
}

#[pymethods]
impl PyDocDiffer {
    #[new]
    #[pyo3(signature = (prev_chunks, prev_offsets, prev_meta, pending, resend_all))]
    fn new(
        py: Python<'_>,
        prev_chunks: &[u8],
        prev_offsets: &[u8],
        prev_meta: &[u8],
        pending: &[u8],
        resend_all: bool,
    ) -> PyResult<Self> {
        let chunks = fixed::<HASH_LEN>(py, prev_chunks, "prev_chunks")?;
        let rows = rows_of(py, prev_offsets)?;
        let digests = fixed::<8>(py, prev_meta, "prev_meta")?;
        let pending = fixed::<HASH_LEN>(py, pending, "pending")?;
        Ok(Self {
            inner: Mutex::new(Some(DocDiff::new(
                &chunks, &rows, &digests, &pending, resend_all,
            ))),
        })
    }

    /// Chunks `hashes` (k, 16) at `offsets` (k, 2), the first being chunk `j0`, with
    /// `digests` (8 bytes each) or None: (send, moved, restated) row indices of the block.
    #[pyo3(signature = (hashes, offsets, j0, digests=None))]
    fn take<'py>(
        &self,
        py: Python<'py>,
        hashes: PyReadonlyArray2<'py, u8>,
        offsets: PyReadonlyArray2<'py, i64>,
        j0: i64,
        digests: Option<&[u8]>,
    ) -> PyResult<(Indices<'py>, Indices<'py>, Indices<'py>)> {
        let contiguous = |what: &str| {
            new_err(
                shape_error(py),
                format!("{what} must be a C-contiguous array (np.ascontiguousarray)"),
            )
        };
        let hs = hashes
            .as_slice()
            .map_err(|_| contiguous("hashes (k, 16)"))?;
        let os = offsets
            .as_slice()
            .map_err(|_| contiguous("offsets (k, 2)"))?;
        let hs = fixed::<HASH_LEN>(py, hs, "hashes")?;
        let spans: Vec<[i64; 2]> = os.chunks_exact(2).map(|c| [c[0], c[1]]).collect();
        let (h, o) = (hashes.shape(), offsets.shape());
        if h[1] != HASH_LEN || o[1] != 2 || h[0] != o[0] {
            return Err(new_err(
                shape_error(py),
                format!(
                    "hashes must have shape (k, {HASH_LEN}) and offsets (k, 2), got ({}, {}) and \
                     ({}, {})",
                    h[0], h[1], o[0], o[1]
                ),
            ));
        }
        let dg: Option<Vec<Digest>> = digests.map(|d| fixed::<8>(py, d, "digests")).transpose()?;
        if let Some(d) = &dg {
            if d.len() != hs.len() {
                return Err(new_err(
                    shape_error(py),
                    format!("{} hashes but {} digests", hs.len(), d.len()),
                ));
            }
        }
        let b = self.with(py, |d| {
            guarded(py, || d.take(&hs, &spans, j0, dg.as_deref()))
        })??;
        Ok((
            indices(py, b.send),
            indices(py, b.moved),
            indices(py, b.restated),
        ))
    }

    /// Distinct chunks taken so far.
    fn count(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |d| d.count())
    }

    /// (n, 16) hashes taken that were not committed.
    fn uncommitted<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let v = self.with(py, |d| d.uncommitted())?;
        Ok(hash_array(py, v))
    }

    /// (chunks, offsets, chunk_meta or b"", lost (n, 16)) for the new state row.
    #[allow(clippy::type_complexity)]
    fn finish<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
        Bound<'py, PyArray2<u8>>,
    )> {
        let d = self
            .inner
            .try_lock()
            .map_err(|_| busy(py))?
            .take()
            .ok_or_else(|| finished(py))?;
        let f = guarded(py, || d.finish())?;
        let rows: Vec<u8> = f.rows.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let meta: &[u8] = if f.any_digest { &f.digests } else { &[] };
        Ok((
            PyBytes::new(py, &f.chunks),
            PyBytes::new(py, &rows),
            PyBytes::new(py, meta),
            hash_array(py, f.lost),
        ))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDocDiffer>()?;
    Ok(())
}
