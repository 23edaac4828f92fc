//! The CPU features that pick the int8 recipe, for Python.

use crate::core::cpu;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// `{name: present}` for the CPU features that decide the int8 recipe (see `core::cpu`).
#[pyfunction]
fn cpu_features(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    for (name, present) in cpu::features() {
        out.set_item(name, present)?;
    }
    Ok(out)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cpu_features, m)?)?;
    Ok(())
}
