//! The kernel source is valid CUDA C: NVRTC compiles it to PTX. Needs libnvrtc only (no GPU, no
//! driver); skipped (one line) when it cannot be loaded. Without a CUDA toolkit, the wheel of
//! PyPI's `nvidia-cuda-nvrtc` package has it:
//!
//! ```text
//! python3 -m pip download 'nvidia-cuda-nvrtc==13.0.*' --no-deps -d /tmp/nvrtc
//! python3 -m zipfile -e /tmp/nvrtc/*.whl /tmp/nvrtc/x
//! LD_LIBRARY_PATH=/tmp/nvrtc/x/nvidia/cu13/lib cargo test -p gptq-cuda --test nvrtc
//! ```

use gptq_cuda::{KERNEL_NAMES, compile_kernels, nvrtc_present};

/// The body of one `.entry` of a PTX module.
fn entry<'a>(ptx: &'a str, name: &str) -> &'a str {
    let start = ptx
        .find(&format!(".entry {name}("))
        .unwrap_or_else(|| panic!("no kernel {name} in the PTX"));
    let rest = &ptx[start..];
    let end = rest[1..].find(".entry").map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

#[test]
fn the_kernels_compile_to_ptx_without_fused_multiply_adds() {
    if !nvrtc_present() {
        gptq_core::testing::announce_skip(
            "libnvrtc cannot be loaded (see this file's header to get one)",
        );
        return;
    }
    // Ampere (A100), Hopper (H100/H200).
    for arch in ["compute_80", "compute_90"] {
        let ptx = compile_kernels(arch).unwrap_or_else(|e| panic!("{e}"));
        for name in KERNEL_NAMES {
            entry(&ptx, name);
        }
        let column_loop = entry(&ptx, "gptq_column_loop");
        // The row kernel's f32 arithmetic: every operation rounded on its own, rintf rounding
        // half to even, IEEE division; no f32 fused multiply-add anywhere (the only fma in the
        // module is f64, inside the library's pow used by the clipping search).
        assert!(!ptx.contains("fma.rn.f32"), "{arch}: an f32 fma");
        assert!(
            !ptx.contains("mad.f32") && !ptx.contains("mad.rn.f32"),
            "{arch}: an f32 mad"
        );
        assert!(!ptx.contains(".ftz.f32"), "{arch}: f32 subnormals flushed");
        for instruction in ["cvt.rni.f32.f32", "div.rn.f32", "mul.rn.f32", "sub.rn.f32"] {
            assert!(
                column_loop.contains(instruction),
                "{arch}: no {instruction}"
            );
        }
        println!(
            "{arch}: {} bytes of PTX, {} kernels",
            ptx.len(),
            KERNEL_NAMES.len()
        );
    }
}
