//! One private Rayon pool for all parallel work, sized by `set_threads`, and the
//! helper that releases the GIL around it. The pool is rebuilt in a forked
//! child (a parent's worker threads do not survive fork).

#![allow(dead_code)] // used by the parallel capabilities as they land

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use std::sync::{Arc, Mutex};

struct Pool {
    pid: u32,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);
static WANTED: Mutex<usize> = Mutex::new(0);

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub(crate) fn pool() -> PyResult<Arc<rayon::ThreadPool>> {
    let wanted = get_threads();
    let pid = std::process::id();
    let mut guard = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = guard.as_ref() {
        if p.pid == pid && p.threads == wanted {
            return Ok(p.pool.clone());
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(wanted)
        .thread_name(|i| format!("qflume-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| {
            PyRuntimeError::new_err(format!("qflume: cannot start {wanted} worker threads: {e}"))
        })?;
    *guard = Some(Pool {
        pid,
        threads: wanted,
        pool: pool.clone(),
    });
    Ok(pool)
}

/// Runs `f` with the GIL released inside qflume's pool.
pub(crate) fn detach_parallel<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> T + Send,
) -> PyResult<T> {
    let pool = pool()?;
    Ok(py.detach(|| pool.install(f)))
}

/// Sets how many threads qflume's parallel work uses (0 = all cores).
#[pyfunction]
fn set_threads(n: usize) {
    *WANTED.lock().unwrap_or_else(|p| p.into_inner()) = n;
}

/// How many threads qflume's parallel work uses now.
#[pyfunction]
fn get_threads() -> usize {
    match *WANTED.lock().unwrap_or_else(|p| p.into_inner()) {
        0 => default_threads(),
        n => n,
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_threads, m)?)?;
    Ok(())
}
