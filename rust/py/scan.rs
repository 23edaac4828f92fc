//! `scan`, `FileEntry` and `read_text` for Python.

use super::error::{arg, invalid_type, new_err, CoreErrorExt};
use super::threads::{detach, detach_parallel};
use crate::core::hash::HASH_LEN;
use crate::core::scan::{self as core_scan, Known, KnownMap, ScanEntry, ScanOptions, SkipReason};
use crate::core::CoreError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use std::ffi::OsString;
use std::path::PathBuf;

/// One file seen by `qflume.scan`.
#[pyclass(frozen, module = "qflume", name = "FileEntry")]
pub struct FileEntry {
    /// Path relative to the root given to scan, '/'-separated (file name for a file given directly).
    #[pyo3(get)]
    key: Py<PyString>,
    /// Absolute path.
    #[pyo3(get)]
    path: Py<PyString>,
    #[pyo3(get)]
    size: u64,
    #[pyo3(get)]
    mtime_ns: i64,
    /// 16-byte content hash, or None when the file is skipped.
    #[pyo3(get)]
    hash: Option<Py<PyBytes>>,
    /// None, or why the file is not ingested (see qflume.scan.SKIP_REASONS).
    #[pyo3(get)]
    skip: Option<Py<PyString>>,
    /// What went wrong, for a skipped file.
    #[pyo3(get)]
    detail: Option<Py<PyString>>,
    /// True when the hash (or a binary/not-utf8 skip) came from `known` and the file was not read.
    #[pyo3(get)]
    unchanged: bool,
}

impl FileEntry {
    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        (
            self.key.clone_ref(py),
            self.path.clone_ref(py),
            self.size,
            self.mtime_ns,
            self.hash.as_ref().map(|h| h.clone_ref(py)),
            self.skip.as_ref().map(|s| s.clone_ref(py)),
            self.detail.as_ref().map(|s| s.clone_ref(py)),
            self.unchanged,
        )
            .into_pyobject(py)
    }

    fn from_core(py: Python<'_>, e: ScanEntry) -> PyResult<Self> {
        Ok(FileEntry {
            key: e.key.into_pyobject(py)?.cast_into::<PyString>()?.unbind(),
            path: e
                .path
                .into_os_string()
                .into_pyobject(py)?
                .cast_into::<PyString>()?
                .unbind(),
            size: e.size,
            mtime_ns: e.mtime_ns,
            hash: e.hash.map(|h| PyBytes::new(py, &h).unbind()),
            skip: e.skip.map(|r| PyString::intern(py, r.as_str()).unbind()),
            detail: e.detail.map(|d| PyString::new(py, &d).unbind()),
            unchanged: e.unchanged,
        })
    }
}

#[pymethods]
impl FileEntry {
    #[new]
    #[pyo3(signature = (key, path, size, mtime_ns, hash=None, skip=None, detail=None, unchanged=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        path: &Bound<'_, PyAny>,
        size: &Bound<'_, PyAny>,
        mtime_ns: &Bound<'_, PyAny>,
        hash: Option<&Bound<'_, PyAny>>,
        skip: Option<&Bound<'_, PyAny>>,
        detail: Option<&Bound<'_, PyAny>>,
        unchanged: bool,
    ) -> PyResult<Self> {
        // Converted here, not by PyO3, so that a wrong type is an InvalidTypeError naming it.
        let key: Bound<'_, PyString> = arg(key, "FileEntry: key", "str")?;
        let path: Bound<'_, PyString> = arg(path, "FileEntry: path", "str")?;
        let size: u64 = arg(size, "FileEntry: size", "an int >= 0")?;
        let mtime_ns: i64 = arg(mtime_ns, "FileEntry: mtime_ns", "an int")?;
        let hash: Option<Bound<'_, PyBytes>> = hash
            .map(|h| arg(h, "FileEntry: hash", "bytes or None"))
            .transpose()?;
        let skip: Option<Bound<'_, PyString>> = skip
            .map(|s| arg(s, "FileEntry: skip", "str or None"))
            .transpose()?;
        let detail: Option<Bound<'_, PyString>> = detail
            .map(|d| arg(d, "FileEntry: detail", "str or None"))
            .transpose()?;
        if let Some(h) = &hash {
            if h.as_bytes().len() != HASH_LEN {
                return Err(CoreError::InvalidArgument(format!(
                    "FileEntry {key}: hash must be {HASH_LEN} bytes, got {}",
                    h.as_bytes().len()
                )))
                .py_err(py);
            }
        }
        if let Some(s) = &skip {
            let s = s.to_str()?;
            if !SkipReason::ALL.iter().any(|r| r.as_str() == s) {
                return Err(CoreError::InvalidArgument(format!(
                    "FileEntry {key}: unknown skip reason {s:?}"
                )))
                .py_err(py);
            }
        }
        Ok(FileEntry {
            key: key.unbind(),
            path: path.unbind(),
            size,
            mtime_ns,
            hash: hash.map(Bound::unbind),
            skip: skip.map(Bound::unbind),
            detail: detail.map(Bound::unbind),
            unchanged,
        })
    }

    /// True when the file has a hash (it is not skipped).
    #[getter]
    fn ok(&self) -> bool {
        self.skip.is_none()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let mut s = format!(
            "FileEntry(key={}, size={}, mtime_ns={}",
            self.key.bind(py).repr()?,
            self.size,
            self.mtime_ns
        );
        if let Some(h) = &self.hash {
            let hex: String = h.as_bytes(py).iter().map(|b| format!("{b:02x}")).collect();
            s.push_str(&format!(", hash={hex}"));
        }
        if let Some(r) = &self.skip {
            s.push_str(&format!(", skip={}", r.bind(py).repr()?));
        }
        if let Some(d) = &self.detail {
            s.push_str(&format!(", detail={}", d.bind(py).repr()?));
        }
        if self.unchanged {
            s.push_str(", unchanged=True");
        }
        s.push(')');
        Ok(s)
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        match other.cast::<FileEntry>() {
            Ok(o) => self.fields(py)?.eq(o.get().fields(py)?),
            Err(_) => Ok(false),
        }
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self.fields(py)?.hash()
    }

    /// Pickles as a call of the constructor with the fields.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        Ok((slf.get_type().into_any(), slf.get().fields(py)?))
    }
}

fn known_value(
    py: Python<'_>,
    key: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
) -> PyResult<Option<Known>> {
    if let Ok(e) = value.cast::<FileEntry>() {
        let e = e.get();
        if let Some(h) = &e.hash {
            let mut hash = [0u8; HASH_LEN];
            hash.copy_from_slice(h.as_bytes(py));
            return Ok(Some(Known::hashed(e.size, e.mtime_ns, hash)));
        }
        let Some(skip) = &e.skip else { return Ok(None) };
        let skip = skip.to_str(py)?;
        let reason = SkipReason::ALL.iter().find(|r| r.as_str() == skip);
        return Ok(match reason {
            Some(r) if r.is_content() => Some(Known {
                size: e.size,
                mtime_ns: e.mtime_ns,
                hash: None,
                skip: Some((
                    *r,
                    e.detail
                        .as_ref()
                        .map(|d| d.to_str(py).map(str::to_owned))
                        .transpose()?,
                )),
            }),
            _ => None,
        });
    }
    let bad = || {
        CoreError::InvalidArgument(format!(
            "known[{}]: expected (size, mtime_ns, hash) with a {HASH_LEN}-byte hash or a FileEntry, got {}",
            key.repr().map(|r| r.to_string()).unwrap_or_default(),
            value
                .repr()
                .map(|r| r.to_string().chars().take(80).collect::<String>())
                .unwrap_or_default()
        ))
    };
    let Ok((size, mtime_ns, hash)) = value.extract::<(u64, i64, Option<Vec<u8>>)>() else {
        return Err(bad()).py_err(py);
    };
    let Some(hash) = hash else { return Ok(None) };
    let Ok(hash) = <[u8; HASH_LEN]>::try_from(hash.as_slice()) else {
        return Err(bad()).py_err(py);
    };
    Ok(Some(Known::hashed(size, mtime_ns, hash)))
}

fn known_map(py: Python<'_>, known: Option<&Bound<'_, PyAny>>) -> PyResult<KnownMap> {
    let mut map = KnownMap::new();
    let Some(known) = known else { return Ok(map) };
    if known.is_none() {
        return Ok(map);
    }
    let mut add = |k: Bound<'_, PyAny>, v: Bound<'_, PyAny>| -> PyResult<()> {
        let key: OsString = k.extract().map_err(|_| {
            new_err(
                invalid_type(py),
                format!(
                    "known: keys must be str (scan keys), got {}",
                    k.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ),
            )
        })?;
        if let Some(v) = known_value(py, &k, &v)? {
            map.insert(key, v);
        }
        Ok(())
    };
    if let Ok(d) = known.cast::<PyDict>() {
        for (k, v) in d.iter() {
            add(k, v)?;
        }
    } else {
        let not_a_mapping = || {
            new_err(
                invalid_type(py),
                "known must be a mapping of key -> (size, mtime_ns, hash)",
            )
        };
        let items = known.call_method0("items").map_err(|_| not_a_mapping())?;
        for item in items.try_iter().map_err(|_| not_a_mapping())? {
            let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) =
                item?.extract().map_err(|_| not_a_mapping())?;
            add(k, v)?;
        }
    }
    Ok(map)
}

/// Walks `paths` in parallel, reads and hashes each file; entries sorted by key.
#[pyfunction]
#[pyo3(signature = (paths, *, include=None, exclude=None, max_file_size=67108864, known=None, follow_links=true, hidden=false, ignore_files=true, raw_extensions=None))]
#[allow(clippy::too_many_arguments)]
fn scan<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    max_file_size: i64,
    known: Option<&Bound<'py, PyAny>>,
    follow_links: bool,
    hidden: bool,
    ignore_files: bool,
    raw_extensions: Option<Vec<String>>,
) -> PyResult<Bound<'py, PyList>> {
    if max_file_size < 0 {
        return Err(CoreError::InvalidArgument(format!(
            "max_file_size must be >= 0, got {max_file_size}"
        )))
        .py_err(py);
    }
    let known = known_map(py, known)?;
    let opts = ScanOptions {
        include: include.unwrap_or_default(),
        exclude: exclude.unwrap_or_default(),
        max_file_size: max_file_size as u64,
        follow_links,
        hidden,
        ignore_files,
        threads: 0,
        raw_extensions: raw_extensions
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
            .collect(),
    };
    let entries = detach_parallel(py, || core_scan::scan(&paths, &opts, &known))?.py_err(py)?;
    drop(known);
    let list = PyList::empty(py);
    for e in entries {
        list.append(Bound::new(py, FileEntry::from_core(py, e)?)?)?;
    }
    Ok(list)
}

/// Reads `path` as UTF-8 text the way scan accepts it (a leading BOM dropped).
#[pyfunction]
fn read_text<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyString>> {
    let text = detach(py, || core_scan::read_text(&path))?.py_err(py)?;
    Ok(PyString::new(py, &text))
}

/// Test hook (tests/test_errors.py): raises the Python form of one `CoreError`
/// kind about `input`, so the whole mapping is checked, including kinds that
/// only other capabilities produce.
#[pyfunction]
fn _raise_core_error(py: Python<'_>, kind: &str, input: &str) -> PyResult<()> {
    let core = match kind {
        "invalid_argument" => CoreError::InvalidArgument(format!("{input}: bad argument")),
        "io" => CoreError::io(
            input,
            std::io::Error::from_raw_os_error(2), // ENOENT
        ),
        "decode" => CoreError::Decode {
            input: input.to_string(),
            detail: "invalid byte at offset 3".into(),
        },
        "tokenizer" => CoreError::Tokenizer {
            source_name: input.to_string(),
            detail: "cannot load".into(),
        },
        "shape" => CoreError::Shape(format!("{input}: 3 ids but 2 vectors")),
        other => {
            return Err(new_err(
                invalid_type(py),
                format!("unknown CoreError kind {other:?}"),
            ))
        }
    };
    Err(super::error::to_pyerr(py, core))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<FileEntry>()?;
    m.add_function(wrap_pyfunction!(_raise_core_error, m)?)?;
    m.add_function(wrap_pyfunction!(scan, m)?)?;
    m.add_function(wrap_pyfunction!(read_text, m)?)?;
    let reasons: Vec<&str> = SkipReason::ALL.iter().map(|r| r.as_str()).collect();
    m.add("SKIP_REASONS", PyTuple::new(m.py(), reasons)?)?;
    Ok(())
}
