//! The forward pass's products `out (+)= x · wᵀ` with cuBLAS SGEMM, for a pipeline that runs its
//! calibration forward passes on the GPU ([`ForwardCompute`] of [`CudaBackend`]).
//!
//! Each call uploads `x` and `w` (and `out` when accumulating), runs one SGEMM in f32 (cuBLAS's
//! default math mode: no TF32), and downloads `out`. The activations live on the host between
//! calls because the rest of the forward pass (attention, norms) runs there.

use cudarc::cublas::sys as blas;
use cudarc::driver::CudaSlice;
use gptq_core::{ForwardCompute, Result, check_x_wt};
use ndarray::{ArrayView2, ArrayViewMut2};

use crate::CudaBackend;
use crate::device::{Session, address, address_mut};
use crate::error::{Context, backend_error, int};

/// One column-major SGEMM as cuBLAS takes it: `C (m × n) = op(A) · op(B) + beta · C`, with
/// `op(A)` `m × k` and `op(B)` `k × n`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sgemm {
    transpose_a: bool,
    transpose_b: bool,
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    beta: f32,
}

/// The SGEMM that computes row-major `out [rows, outputs] (+)= x [rows, inner] · wᵀ` (`w`
/// `[outputs, inner]`) on contiguous row-major buffers, with `A` = `w`'s buffer and `B` =
/// `x`'s. Read column-major, each buffer is its matrix transposed: `out`'s is `outᵀ`
/// (`outputs × rows`), `x`'s is `xᵀ` (`inner × rows`), `w`'s is `wᵀ` (`inner × outputs`); and
/// `outᵀ = w · xᵀ = (wᵀ)ᵀ · xᵀ`, so `A` is transposed and `B` is not. `inner` must be at least
/// 1 (cuBLAS needs leading dimensions ≥ 1).
fn x_wt_call(rows: usize, outputs: usize, inner: usize, accumulate: bool) -> Sgemm {
    Sgemm {
        transpose_a: true,
        transpose_b: false,
        m: outputs,
        n: rows,
        k: inner,
        lda: inner,
        ldb: inner,
        ldc: outputs,
        beta: if accumulate { 1.0 } else { 0.0 },
    }
}

fn operation(transpose: bool) -> blas::cublasOperation_t {
    if transpose {
        blas::cublasOperation_t::CUBLAS_OP_T
    } else {
        blas::cublasOperation_t::CUBLAS_OP_N
    }
}

impl Sgemm {
    /// Queues the product on the session's stream.
    fn run(
        &self,
        session: &Session<'_>,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let what = "linear layer size";
        let (m, n, k) = (int(self.m, what)?, int(self.n, what)?, int(self.k, what)?);
        let (lda, ldb, ldc) = (
            int(self.lda, what)?,
            int(self.ldb, what)?,
            int(self.ldc, what)?,
        );
        let one = 1.0f32;
        let stream = session.stream();
        let (a, b) = (address(a, stream), address(b, stream));
        let c = address_mut(c, stream);
        // SAFETY: the caller allocated A with lda · (transposed ? m : k) values, B with
        // ldb · (transposed ? k : n) and C with ldc · n (`x_wt_call`'s shapes); the pointers are
        // device addresses on the session's stream, whose cuBLAS handle this is.
        unsafe {
            blas::cublasSgemm_v2(
                session.blas(),
                operation(self.transpose_a),
                operation(self.transpose_b),
                m,
                n,
                k,
                &one,
                a as *const f32,
                lda,
                b as *const f32,
                ldb,
                &self.beta,
                c as *mut f32,
                ldc,
            )
        }
        .result()
        .context(|| {
            format!(
                "cuBLAS SGEMM failed on a {}×{} by {}×{} product of the forward pass",
                self.n, self.k, self.k, self.m
            )
        })
    }
}

impl CudaBackend {
    /// The median time of `repeats` f32 GEMMs `C (m × n) = A (m × k) · B (k × n)` on operands
    /// already in GPU memory (after one untimed run): the yardstick that benchmarks hold the
    /// solver's block updates, which are such products, against.
    pub fn time_sgemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        repeats: usize,
    ) -> Result<std::time::Duration> {
        if m == 0 || n == 0 || k == 0 {
            return Ok(std::time::Duration::ZERO);
        }
        // Non-zero operands: a GPU multiplying zeros draws less power and may clock higher.
        let values = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| {
                    ((i.wrapping_mul(2_654_435_761).wrapping_add(seed)) % 1000) as f32 / 500.0 - 1.0
                })
                .collect()
        };
        let session = self.device.session()?;
        // Run as `x · wᵀ` with `x` `[m, k]` and `w` `[n, k]`: the same shape and flops.
        let x = session.upload(&values(m * k, 1), "a benchmark operand")?;
        let w = session.upload(&values(k * n, 2), "a benchmark operand")?;
        let mut c = session.uninitialized(m * n, "a benchmark result")?;
        let call = x_wt_call(m, n, k, false);
        let mut times = Vec::with_capacity(repeats);
        for run in 0..=repeats.max(1) {
            let start = std::time::Instant::now();
            call.run(&session, &w, &x, &mut c)?;
            session.synchronize()?;
            if run > 0 {
                times.push(start.elapsed());
            }
        }
        times.sort();
        Ok(times[times.len() / 2])
    }
}

impl ForwardCompute for CudaBackend {
    /// f32 SGEMM (cuBLAS's default math mode: no TF32).
    fn precision(&self) -> &'static str {
        "f32"
    }

    fn x_wt(
        &self,
        x: ArrayView2<'_, f32>,
        w: ArrayView2<'_, f32>,
        mut out: ArrayViewMut2<'_, f32>,
        accumulate: bool,
    ) -> Result<()> {
        check_x_wt(&x, &w, &out)?;
        let (rows, inner, outputs) = (x.nrows(), x.ncols(), w.nrows());
        if rows == 0 || outputs == 0 {
            return Ok(());
        }
        if inner == 0 {
            // An empty sum: cuBLAS would refuse the zero leading dimensions.
            if !accumulate {
                out.fill(0.0);
            }
            return Ok(());
        }
        // Borrowed as they are when row-major and contiguous, as the pipeline's arrays are.
        let (x, w) = (x.as_standard_layout(), w.as_standard_layout());
        let session = self.device.session()?;
        let x_device = session.upload(contiguous(&x), "the input of a linear layer")?;
        let w_device = session.upload(contiguous(&w), "the weight of a linear layer")?;
        let mut out_device = if accumulate {
            let current = out.as_standard_layout();
            session.upload(contiguous(&current), "the output of a linear layer")?
        } else {
            // SGEMM with beta 0 writes every element without reading it.
            session.uninitialized(rows * outputs, "the output of a linear layer")?
        };
        x_wt_call(rows, outputs, inner, accumulate).run(
            &session,
            &w_device,
            &x_device,
            &mut out_device,
        )?;
        match out.as_slice_mut() {
            Some(slice) => session.download_into(&out_device, slice, "a linear layer's output"),
            None => {
                let values =
                    session.download(&out_device, rows * outputs, "a linear layer's output")?;
                let values = ArrayView2::from_shape((rows, outputs), &values)
                    .map_err(|e| backend_error(format!("internal error: {e}")))?;
                out.assign(&values);
                Ok(())
            }
        }
    }
}

/// The values of a standard-layout array, in order.
fn contiguous<'a>(a: &'a ndarray::CowArray<'_, f32, ndarray::Ix2>) -> &'a [f32] {
    a.as_slice()
        .expect("as_standard_layout gives a contiguous array")
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptq_core::testing::seeded_matrix;
    use ndarray::Array2;

    /// What cuBLAS computes for `call`, in plain loops over column-major buffers.
    fn column_major_sgemm(call: &Sgemm, a: &[f32], b: &[f32], c: &mut [f32]) {
        let at = |i: usize, l: usize| {
            if call.transpose_a {
                a[l + i * call.lda]
            } else {
                a[i + l * call.lda]
            }
        };
        let bt = |l: usize, j: usize| {
            if call.transpose_b {
                b[j + l * call.ldb]
            } else {
                b[l + j * call.ldb]
            }
        };
        for j in 0..call.n {
            for i in 0..call.m {
                let dot: f64 = (0..call.k)
                    .map(|l| f64::from(at(i, l)) * f64::from(bt(l, j)))
                    .sum();
                let cell = &mut c[i + j * call.ldc];
                *cell = (dot + f64::from(call.beta) * f64::from(*cell)) as f32;
            }
        }
    }

    #[test]
    fn the_sgemm_call_computes_x_times_w_transposed_on_row_major_buffers() {
        for (rows, outputs, inner) in [(1, 1, 1), (5, 3, 7), (17, 9, 4), (3, 12, 33)] {
            let x = seeded_matrix(rows, inner, 1, 1.0);
            let w = seeded_matrix(outputs, inner, 2, 1.0);
            let start = seeded_matrix(rows, outputs, 3, 1.0);
            let product = x.dot(&w.t());
            for accumulate in [false, true] {
                let call = x_wt_call(rows, outputs, inner, accumulate);
                // Buffers as the upload sends them: each array's row-major values.
                let mut c: Vec<f32> = start.iter().copied().collect();
                let (a, b) = (
                    w.iter().copied().collect::<Vec<_>>(),
                    x.iter().copied().collect::<Vec<_>>(),
                );
                column_major_sgemm(&call, &a, &b, &mut c);
                let got = Array2::from_shape_vec((rows, outputs), c).unwrap();
                let want = if accumulate {
                    &start + &product
                } else {
                    product.clone()
                };
                let err = (&got - &want).iter().fold(0f32, |m, d| m.max(d.abs()));
                assert!(err < 1e-5, "{rows}×{inner}·({outputs}×{inner})ᵀ: {err}");
            }
        }
    }
}
