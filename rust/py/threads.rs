//! One private Rayon pool for all parallel work, sized by `set_threads`, and the
//! helpers that release the GIL around it. The pool is rebuilt in a forked
//! child (a parent's worker threads do not survive fork).
//!
//! The helpers also stop a panic of the core (a bug) at the binding: it becomes
//! `qflume.RustPanicError`, an ordinary exception, instead of PyO3's
//! PanicException, a BaseException that ends the caller's thread.

#![allow(dead_code)] // used by the parallel capabilities as they land

use crate::py::error::{invalid_input, invalid_type, io_error, new_err, rust_panic};
use pyo3::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

/// Where the last panic happened (file:line), kept by the hook for the error message.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Panics of this module are reported by the exception they become, not printed
/// (set RUST_BACKTRACE to see them printed as well).
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(loc) = info.location() {
            *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(format!("{}:{}", loc.file(), loc.line()));
        }
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            default(info);
        }
    }));
}

fn panic_error(py: Python<'_>, payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    let at = LAST_PANIC
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .map(|l| format!(" at {l}"))
        .unwrap_or_default();
    let msg = format!(
        "internal error in qflume's Rust core{at}: {what} (a bug: please report it with the \
         input that caused it; nothing was written by this call)"
    );
    new_err(rust_panic(py), msg)
}

/// Runs `f` here (the GIL held): a panic becomes `RustPanicError`.
pub(crate) fn guarded<T>(py: Python<'_>, f: impl FnOnce() -> T) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_error(py, p))
}

/// Runs `f` with the GIL released: a panic becomes `RustPanicError`.
pub(crate) fn detach<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(f)))
        .map_err(|p| panic_error(py, p))
}

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

pub(crate) fn pool(py: Python<'_>) -> PyResult<Arc<rayon::ThreadPool>> {
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
            new_err(
                io_error(py),
                format!(
                    "qflume cannot start {wanted} worker threads ({e}): set fewer with \
                     qflume.set_threads(n) or free some"
                ),
            )
        })?;
    *guard = Some(Pool {
        pid,
        threads: wanted,
        pool: pool.clone(),
    });
    Ok(pool)
}

/// Runs `f` with the GIL released inside qflume's pool: a panic (also one in a
/// worker thread) becomes `RustPanicError`.
pub(crate) fn detach_parallel<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> T + Send,
) -> PyResult<T> {
    let pool = pool(py)?;
    detach(py, || pool.install(f))
}

/// Panics on purpose, here or with the GIL released or in a worker thread
/// (`where_` = "here", "detached" or "parallel"): for the tests of the guards.
#[pyfunction]
fn _panic_for_test(py: Python<'_>, where_: &str) -> PyResult<()> {
    let boom = || -> () { panic!("deliberate panic for a test") };
    match where_ {
        "here" => guarded(py, boom),
        "detached" => detach(py, boom),
        "parallel" => detach_parallel(py, || {
            use rayon::prelude::*;
            (0..4).into_par_iter().for_each(|i| {
                if i == 3 {
                    boom()
                }
            })
        }),
        other => Err(new_err(
            invalid_input(py),
            format!("where_ must be here, detached or parallel, not {other:?}"),
        )),
    }
}

/// More threads than any machine has cores: a pool this large would only exhaust memory
/// while its threads start.
const MAX_THREADS: i64 = 4096;

fn too_many(n: &Bound<'_, PyAny>) -> PyErr {
    new_err(
        invalid_input(n.py()),
        format!("set_threads: n = {n} is more than {MAX_THREADS} threads"),
    )
}

/// Sets how many threads qflume's parallel work uses (0 = all cores).
#[pyfunction]
fn set_threads(n: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = n.py();
    if n.is_instance_of::<pyo3::types::PyBool>() {
        return Err(new_err(
            invalid_type(py),
            format!("set_threads: n must be an int (0 = all cores), not {n}"),
        ));
    }
    let wanted = match n.extract::<i64>() {
        Ok(v @ 0..=MAX_THREADS) => v as usize,
        Ok(v @ ..0) => {
            return Err(new_err(
                invalid_input(py),
                format!("set_threads: n must be >= 0 (0 = all cores), got {v}"),
            ))
        }
        Ok(_) => return Err(too_many(n)),
        Err(_) if n.is_instance_of::<pyo3::types::PyInt>() => return Err(too_many(n)),
        Err(_) => {
            let ty = n
                .get_type()
                .name()
                .map(|t| t.to_string())
                .unwrap_or_default();
            return Err(new_err(
                invalid_type(py),
                format!("set_threads: n must be an int (0 = all cores), not {ty}"),
            ));
        }
    };
    *WANTED.lock().unwrap_or_else(|p| p.into_inner()) = wanted;
    Ok(())
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
    install_panic_hook();
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_threads, m)?)?;
    Ok(())
}
