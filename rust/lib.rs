//! qflume's Rust core. `core` is pure Rust; `py` holds the thin PyO3 bindings.
//! This file only declares modules and registers the Python module.

pub mod core;
#[cfg(feature = "python")]
mod py;

#[cfg(feature = "python")]
#[pyo3::pymodule(gil_used = false)]
fn _core(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    py::register(m)
}
