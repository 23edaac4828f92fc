//! The chunk diff of one document for Python (`qflume.pipeline._DocDiff` drives it).

use crate::core::diff::{Digest, DocDiff, Hash, Row};
use crate::core::hash::HASH_LEN;
use crate::py::threads::guarded;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Mutex;

fn fixed<const N: usize>(blob: &[u8], what: &str) -> PyResult<Vec<[u8; N]>> {
    if blob.len() % N != 0 {
        return Err(PyValueError::new_err(format!(
            "{what}: {} bytes is not a whole number of {N}-byte entries",
            blob.len()
        )));
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

fn rows_of(blob: &[u8]) -> PyResult<Vec<Row>> {
    Ok(fixed::<24>(blob, "prev_offsets")?
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

impl PyDocDiffer {
    fn with<T>(&self, f: impl FnOnce(&mut DocDiff) -> T) -> PyResult<T> {
        let mut g = self
            .inner
            .try_lock()
            .map_err(|_| PyRuntimeError::new_err("DocDiffer is in use by another thread"))?;
        let d = g
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err("DocDiffer is finished"))?;
        Ok(f(d))
    }
}

#[pymethods]
impl PyDocDiffer {
    #[new]
    #[pyo3(signature = (prev_chunks, prev_offsets, prev_meta, pending, resend_all))]
    fn new(
        prev_chunks: &[u8],
        prev_offsets: &[u8],
        prev_meta: &[u8],
        pending: &[u8],
        resend_all: bool,
    ) -> PyResult<Self> {
        let chunks = fixed::<HASH_LEN>(prev_chunks, "prev_chunks")?;
        let rows = rows_of(prev_offsets)?;
        let digests = fixed::<8>(prev_meta, "prev_meta")?;
        let pending = fixed::<HASH_LEN>(pending, "pending")?;
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
        let hs = hashes
            .as_slice()
            .map_err(|_| PyValueError::new_err("hashes must be a C-contiguous (k, 16) array"))?;
        let os = offsets
            .as_slice()
            .map_err(|_| PyValueError::new_err("offsets must be a C-contiguous (k, 2) array"))?;
        let hs = fixed::<HASH_LEN>(hs, "hashes")?;
        let spans: Vec<[i64; 2]> = os.chunks_exact(2).map(|c| [c[0], c[1]]).collect();
        if spans.len() != hs.len() {
            return Err(PyValueError::new_err(format!(
                "{} hashes but {} offsets",
                hs.len(),
                spans.len()
            )));
        }
        let dg: Option<Vec<Digest>> = digests.map(|d| fixed::<8>(d, "digests")).transpose()?;
        if let Some(d) = &dg {
            if d.len() != hs.len() {
                return Err(PyValueError::new_err(format!(
                    "{} hashes but {} digests",
                    hs.len(),
                    d.len()
                )));
            }
        }
        let b = self.with(|d| guarded(py, || d.take(&hs, &spans, j0, dg.as_deref())))??;
        Ok((
            indices(py, b.send),
            indices(py, b.moved),
            indices(py, b.restated),
        ))
    }

    /// Distinct chunks taken so far.
    fn count(&self) -> PyResult<usize> {
        self.with(|d| d.count())
    }

    /// (n, 16) hashes taken that were not committed.
    fn uncommitted<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let v = self.with(|d| d.uncommitted())?;
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
            .map_err(|_| PyRuntimeError::new_err("DocDiffer is in use by another thread"))?
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("DocDiffer is finished"))?;
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
