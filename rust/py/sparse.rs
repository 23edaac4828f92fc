//! BM25 and SPLADE sparse vectors for Python: CSR out as three numpy arrays.

use crate::core::sparse::{splade_pool as core_splade_pool, token_id, Bm25, Bm25Params, Csr};
use crate::py::error::{new_err, shape_error, CoreErrorExt};
use crate::py::threads::{detach_parallel, guarded};
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray2, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;

/// Batches under this many bytes of text run without releasing the GIL.
const GIL_MINSIZE: usize = 2048;

type CsrArrays<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<u32>>,
    Bound<'py, PyArray1<f32>>,
);

fn to_arrays(py: Python<'_>, csr: Csr) -> CsrArrays<'_> {
    (
        csr.indptr.into_pyarray(py),
        csr.indices.into_pyarray(py),
        csr.values.into_pyarray(py),
    )
}

/// BM25 term weights with FastEmbed `Qdrant/bm25` token ids (see `qflume.Bm25`).
#[pyclass(frozen, name = "Bm25Encoder", module = "qflume._core")]
struct PyBm25 {
    inner: Bm25,
    threads: usize,
}

impl PyBm25 {
    fn run<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<PyBackedStr>,
        query: bool,
    ) -> PyResult<CsrArrays<'py>> {
        let bytes: usize = texts.iter().map(|t| t.len()).sum();
        let work = |threads: usize| {
            if query {
                self.inner.embed_queries(&texts, threads)
            } else {
                self.inner.embed_documents(&texts, threads)
            }
        };
        // Small batches run here, serially: releasing the GIL costs more than the work.
        let csr = if bytes < GIL_MINSIZE {
            guarded(py, || work(1))?
        } else {
            detach_parallel(py, || work(self.threads))?
        };
        Ok(to_arrays(py, csr))
    }
}

#[pymethods]
impl PyBm25 {
    #[new]
    #[pyo3(signature = (*, language = "english", k = 1.2, b = 0.75, avg_len = 256.0,
                        stopwords = None, token_max_length = 40, threads = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        language: &str,
        k: f64,
        b: f64,
        avg_len: f64,
        stopwords: Option<Vec<String>>,
        token_max_length: usize,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        let inner = Bm25::new(Bm25Params {
            language,
            k,
            b,
            avg_len,
            stopwords,
            token_max_length,
        })
        .py_err(py)?;
        Ok(PyBm25 {
            inner,
            threads: threads.unwrap_or(0),
        })
    }

    /// Document vectors: (indptr int64, indices uint32, values float32).
    fn embed<'py>(&self, py: Python<'py>, texts: Vec<PyBackedStr>) -> PyResult<CsrArrays<'py>> {
        self.run(py, texts, false)
    }

    /// Query vectors: weight 1.0 per distinct token.
    fn embed_query<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<PyBackedStr>,
    ) -> PyResult<CsrArrays<'py>> {
        self.run(py, texts, true)
    }

    /// The stems of `text` that count, in order.
    fn tokens(&self, text: &str) -> Vec<String> {
        self.inner.tokens(text)
    }

    /// The sparse index of a stemmed token: abs(murmurhash3_x86_32(token, seed=0)).
    #[staticmethod]
    fn token_id(token: &str) -> u32 {
        token_id(token)
    }

    #[getter]
    fn language(&self) -> &str {
        self.inner.language()
    }

    #[getter]
    fn k(&self) -> f64 {
        self.inner.params().0
    }

    #[getter]
    fn b(&self) -> f64 {
        self.inner.params().1
    }

    #[getter]
    fn avg_len(&self) -> f64 {
        self.inner.params().2
    }
}

/// SPLADE weights from masked-LM logits (batch, seq, vocab) and the attention mask
/// (batch, seq): log(1 + relu(logits)) max-pooled over unmasked positions, CSR out.
#[pyfunction]
#[pyo3(signature = (logits, attention_mask, *, top_k = None, threshold = 0.0, threads = None))]
fn splade_pool<'py>(
    py: Python<'py>,
    logits: PyReadonlyArray3<'py, f32>,
    attention_mask: PyReadonlyArray2<'py, i64>,
    top_k: Option<usize>,
    threshold: f32,
    threads: Option<usize>,
) -> PyResult<CsrArrays<'py>> {
    let dims = logits.shape();
    let shape = (dims[0], dims[1], dims[2]);
    let contiguous = |what: &str| {
        new_err(
            shape_error(py),
            format!("splade_pool: {what} must be C-contiguous (np.ascontiguousarray)"),
        )
    };
    let logits = logits.as_slice().map_err(|_| contiguous("logits"))?;
    let mask = attention_mask
        .as_slice()
        .map_err(|_| contiguous("attention_mask"))?;
    let threads = threads.unwrap_or(0);
    let csr = detach_parallel(py, || {
        core_splade_pool(logits, mask, shape, top_k, threshold, threads)
    })?
    .py_err(py)?;
    Ok(to_arrays(py, csr))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBm25>()?;
    m.add_function(wrap_pyfunction!(splade_pool, m)?)?;
    Ok(())
}
