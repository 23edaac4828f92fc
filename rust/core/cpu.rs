//! What the CPU at hand can do, as its own instructions report it (CPUID and XGETBV on x86,
//! the auxiliary vector on ARM): the same test ONNX Runtime's kernels make when they pick an
//! int8 kernel. `/proc/cpuinfo` is not consulted, so an emulated or masked CPU reads true.

/// The CPU features that decide qflume's int8 recipe, as `(name, present)` pairs.
///
/// Names follow Linux's `/proc/cpuinfo` flags: `avx2`, `avx512bw`, `avx512_vnni`, `avx_vnni`
/// on x86-64, `asimddp` (the ARMv8.2 dot product) on AArch64. Every name is listed on every
/// architecture, `false` where it does not apply.
pub fn features() -> Vec<(&'static str, bool)> {
    vec![
        ("x86_64", cfg!(target_arch = "x86_64")),
        ("aarch64", cfg!(target_arch = "aarch64")),
        ("avx2", x86("avx2")),
        ("avx512bw", x86("avx512bw")),
        ("avx512_vnni", x86("avx512vnni")),
        ("avx_vnni", x86("avxvnni")),
        ("asimddp", arm_dotprod()),
    ]
}

#[cfg(target_arch = "x86_64")]
fn x86(name: &str) -> bool {
    match name {
        "avx2" => std::arch::is_x86_feature_detected!("avx2"),
        "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
        "avx512vnni" => std::arch::is_x86_feature_detected!("avx512vnni"),
        "avxvnni" => std::arch::is_x86_feature_detected!("avxvnni"),
        _ => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn x86(_name: &str) -> bool {
    false
}

#[cfg(target_arch = "aarch64")]
fn arm_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

#[cfg(not(target_arch = "aarch64"))]
fn arm_dotprod() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_listed_once() {
        let names: Vec<_> = features().into_iter().map(|(n, _)| n).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(names.len(), unique.len());
        assert!(names.contains(&"avx512_vnni") && names.contains(&"asimddp"));
    }
}
