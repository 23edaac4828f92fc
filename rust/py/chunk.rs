//! The chunker for Python: text in as borrowed UTF-8, offsets out as numpy arrays.

use crate::core::chunk::{
    open_file, tokenizer_from_file, tokenizer_from_json, ChunkBatch, Chunker, FileChunker,
};
use crate::core::hash::HASH_LEN;
use crate::core::CoreError;
use crate::py::error::{new_err, state_error};
use crate::py::threads::{detach, detach_parallel, guarded};
use crate::py::CoreErrorExt;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::PyList;
use rayon::prelude::*;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Inputs under this many bytes are chunked without releasing the GIL.
const GIL_MINSIZE: usize = 2048;

type Offsets<'py> = Bound<'py, PyArray2<i64>>;
/// (offsets, texts, hashes, ids) of one block of a streamed file.
type FileBatch<'py> = (
    Offsets<'py>,
    Bound<'py, PyList>,
    Bound<'py, PyArray2<u8>>,
    Bound<'py, PyArray2<u8>>,
);

fn offsets_array(py: Python<'_>, offs: Vec<[i64; 2]>) -> Offsets<'_> {
    let n = offs.len();
    let flat: Vec<i64> = offs.into_iter().flatten().collect();
    // The shape always matches the length: n pairs.
    match Array2::from_shape_vec((n, 2), flat) {
        Ok(a) => a.into_pyarray(py),
        Err(_) => Array2::<i64>::zeros((0, 2)).into_pyarray(py),
    }
}

fn flat_array<T: numpy::Element>(py: Python<'_>, v: Vec<T>, cols: usize) -> Bound<'_, PyArray2<T>> {
    let n = v.len() / cols;
    match Array2::from_shape_vec((n, cols), v) {
        Ok(a) => a.into_pyarray(py),
        Err(_) => Array2::<T>::from_shape_vec((0, cols), Vec::new())
            .map(|a| a.into_pyarray(py))
            .unwrap_or_else(|_| PyArray2::zeros(py, [0, cols], false)),
    }
}

/// The Rust chunker; `qflume.Chunker` wraps it.
#[pyclass(frozen, name = "Chunker", module = "qflume._core")]
pub struct PyChunker {
    inner: Arc<Chunker>,
}

#[pymethods]
impl PyChunker {
    #[new]
    #[pyo3(signature = (*, max_chars=None, max_tokens=None, tokenizer_json=None, tokenizer_path=None, tokenizer_name=None, overlap=0))]
    fn new(
        py: Python<'_>,
        max_chars: Option<usize>,
        max_tokens: Option<usize>,
        tokenizer_json: Option<&str>,
        tokenizer_path: Option<PathBuf>,
        tokenizer_name: Option<&str>,
        overlap: usize,
    ) -> PyResult<Self> {
        let inner = match (max_chars, max_tokens) {
            (Some(_), Some(_)) => Err(CoreError::InvalidArgument(
                "give either max_chars or max_tokens, not both".into(),
            )),
            (_, Some(m)) => {
                let tok = match (tokenizer_json, tokenizer_path.as_deref()) {
                    (Some(json), _) => {
                        tokenizer_from_json(json, tokenizer_name.unwrap_or("<tokenizer object>"))
                    }
                    (None, Some(path)) => tokenizer_from_file(path),
                    (None, None) => Err(CoreError::InvalidArgument(
                        "max_tokens needs a tokenizer (a tokenizer.json path or a tokenizers.Tokenizer)"
                            .into(),
                    )),
                }
                .py_err(py)?;
                let name = tokenizer_name
                    .map(str::to_string)
                    .or_else(|| tokenizer_path.as_ref().map(|p| p.display().to_string()))
                    .unwrap_or_else(|| "<tokenizer object>".into());
                Chunker::tokens(tok, &name, m, overlap)
            }
            (m, None) => Chunker::chars(m.unwrap_or(1000), overlap),
        }
        .py_err(py)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The size limit (characters or tokens).
    #[getter]
    fn max_size(&self) -> usize {
        self.inner.max_size()
    }

    #[getter]
    fn overlap(&self) -> usize {
        self.inner.overlap()
    }

    #[getter]
    fn token_mode(&self) -> bool {
        self.inner.is_token_mode()
    }

    /// (start, end) str offsets of the chunks of `text`, an (n, 2) int64 array.
    fn chunk<'py>(&self, py: Python<'py>, text: PyBackedStr) -> PyResult<Offsets<'py>> {
        let t: &str = &text;
        let offs = if t.len() < GIL_MINSIZE {
            guarded(py, || self.inner.chunk_chars(t))?
        } else {
            detach(py, || self.inner.chunk_chars(t))?
        }
        .py_err(py)?;
        Ok(offsets_array(py, offs))
    }

    /// One offsets array per text, computed in parallel.
    fn chunk_many<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<PyBackedStr>,
    ) -> PyResult<Vec<Offsets<'py>>> {
        let strs: Vec<&str> = texts.iter().map(|t| &**t).collect();
        let total: usize = strs.iter().map(|t| t.len()).sum();
        let chunker = &self.inner;
        let work = || -> Result<Vec<Vec<[i64; 2]>>, (usize, CoreError)> {
            strs.par_iter()
                .enumerate()
                .map(|(i, t)| chunker.chunk_chars(t).map_err(|e| (i, e)))
                .collect()
        };
        let res = if total < GIL_MINSIZE {
            guarded(py, work)?
        } else {
            detach_parallel(py, work)?
        };
        let all = res.map_err(|(i, e)| with_index(py, i, e))?;
        Ok(all.into_iter().map(|o| offsets_array(py, o)).collect())
    }

    /// Chunks, XXH3-128 content hashes and point ids of many documents, in
    /// one parallel pass: (doc_indptr, offsets, hashes, ids).
    #[allow(clippy::type_complexity)]
    fn chunk_batch<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<PyBackedStr>,
        keys: Vec<PyBackedStr>,
    ) -> PyResult<(
        Bound<'py, PyArray1<i64>>,
        Offsets<'py>,
        Bound<'py, PyArray2<u8>>,
        Bound<'py, PyArray2<u8>>,
    )> {
        if texts.len() != keys.len() {
            return Err(CoreError::Shape(format!(
                "chunk_batch: {} texts but {} keys",
                texts.len(),
                keys.len()
            )))
            .py_err(py);
        }
        let pairs: Vec<(&str, &str)> = texts.iter().zip(&keys).map(|(t, k)| (&**t, &**k)).collect();
        let total: usize = pairs.iter().map(|(t, _)| t.len()).sum();
        let chunker = &self.inner;
        let work = || -> Result<ChunkBatch, (usize, CoreError)> {
            let docs = pairs
                .par_iter()
                .enumerate()
                .map(|(i, (t, k))| chunker.chunk_hashed(k.as_bytes(), t).map_err(|e| (i, e)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ChunkBatch::from_docs(docs))
        };
        let res = if total < GIL_MINSIZE {
            guarded(py, work)?
        } else {
            detach_parallel(py, work)?
        };
        let b = res.map_err(|(i, e)| with_index(py, i, e))?;
        Ok((
            PyArray1::from_vec(py, b.doc_indptr),
            flat_array(py, b.offsets, 2),
            flat_array(py, b.hashes, HASH_LEN),
            flat_array(py, b.ids, HASH_LEN),
        ))
    }

    /// Chunks a UTF-8 file block by block in bounded memory; with `key`, also the
    /// chunks' point ids in that document.
    #[pyo3(signature = (path, *, block_size = 1 << 20, key = None))]
    fn chunk_file(
        &self,
        py: Python<'_>,
        path: PathBuf,
        block_size: usize,
        key: Option<&str>,
    ) -> PyResult<ChunkFileIter> {
        let mut reader = open_file(&path, block_size).py_err(py)?;
        if let Some(k) = key {
            reader = reader.with_key(k.as_bytes());
        }
        Ok(ChunkFileIter {
            chunker: self.inner.clone(),
            reader: Mutex::new(reader),
        })
    }

    /// Tokens of `text` without special tokens (None in character mode).
    fn count_tokens(&self, py: Python<'_>, text: &str) -> PyResult<Option<usize>> {
        self.inner.count_tokens(text).py_err(py)
    }
}

/// A core error about the i-th input: names it.
fn with_index(py: Python<'_>, i: usize, e: CoreError) -> PyErr {
    let e = match e {
        CoreError::Tokenizer {
            source_name,
            detail,
        } => CoreError::Tokenizer {
            source_name,
            detail: format!("texts[{i}]: {detail}"),
        },
        other => other,
    };
    Err::<(), _>(e).py_err(py).unwrap_err()
}

/// Iterator over (offsets, texts, hashes, ids) batches of a file; each `__next__`
/// reads, chunks and hashes one block with the GIL released (ids are (0, 16)
/// without a key).
#[pyclass(frozen, name = "ChunkFileIter", module = "qflume._core")]
pub struct ChunkFileIter {
    chunker: Arc<Chunker>,
    reader: Mutex<FileChunker<File>>,
}

#[pymethods]
impl ChunkFileIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<FileBatch<'py>>> {
        let chunker = &self.chunker;
        let reader = &self.reader;
        let next = detach(py, || match reader.try_lock() {
            Ok(mut r) => Ok(r.next_batch(chunker)),
            Err(_) => Err(()),
        })?;
        let batch = next
            .map_err(|_| {
                new_err(
                    state_error(py),
                    "chunk_file iterator is already in use by another thread (iterate it from \
                     one thread, or open one per thread)",
                )
            })?
            .py_err(py)?;
        match batch {
            None => Ok(None),
            Some(b) => {
                let texts = PyList::new(py, b.texts)?;
                let hashes: Vec<u8> = b.hashes.into_iter().flatten().collect();
                let ids: Vec<u8> = b.ids.into_iter().flatten().collect();
                Ok(Some((
                    offsets_array(py, b.offsets),
                    texts,
                    flat_array(py, hashes, HASH_LEN),
                    flat_array(py, ids, HASH_LEN),
                )))
            }
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyChunker>()?;
    m.add_class::<ChunkFileIter>()?;
    Ok(())
}
