// The device kernels of the CUDA backend, compiled at run time by NVRTC.
//
// The in-block column loop (`gptq_row`) is the CPU row kernel of gptq-solver
// (crates/gptq-solver/src/cpu/column_loop.rs) and the min-max grid of gptq-quant
// (crates/gptq-quant/src/grid.rs) transcribed operation for operation: the same IEEE f32
// operations in the same order, every product and sum rounded on its own (the FMUL/FADD/... macros
// map to __fmul_rn & co., which are never contracted into fused multiply-adds, and the module is
// also compiled with --fmad=false), round-half-to-even by rintf, divisions correctly rounded
// (--prec-div=true), subnormals kept (--ftz=false). A thread owns one row, so no sum is split.
//
// Without __CUDACC__ the file is plain C99: the column loop then compiles on the host, which is how
// the tests check it bit for bit against the CPU backend on machines without a GPU
// (tests/emulation.rs, tests/emulation/harness.c).

#ifdef __CUDACC__
#define GPTQ_DEVICE __device__ static __forceinline__
#define FADD(a, b) __fadd_rn((a), (b))
#define FSUB(a, b) __fsub_rn((a), (b))
#define FMUL(a, b) __fmul_rn((a), (b))
#define FDIV(a, b) __fdiv_rn((a), (b))
#define DADD(a, b) __dadd_rn((a), (b))
#define DMUL(a, b) __dmul_rn((a), (b))
#define GPTQ_INFINITY_D __longlong_as_double(0x7ff0000000000000LL)
#else
#include <math.h>
#define GPTQ_DEVICE static
#define FADD(a, b) ((float)((a) + (b)))
#define FSUB(a, b) ((float)((a) - (b)))
#define FMUL(a, b) ((float)((a) * (b)))
#define FDIV(a, b) ((float)((a) / (b)))
#define DADD(a, b) ((double)((a) + (b)))
#define DMUL(a, b) ((double)((a) * (b)))
#define GPTQ_INFINITY_D HUGE_VAL
#endif

#define GPTQ_FLT_MAX 3.40282346638528859812e+38f
#define GPTQ_DBL_MAX 1.79769313486231570815e+308

// GroupPlan modes of the column-loop kernel.
#define GPTQ_FIXED 0
#define GPTQ_DYNAMIC_CURRENT 1
#define GPTQ_DYNAMIC_BLOCK_START 2

GPTQ_DEVICE int gptq_finite(float x) { return fabsf(x) <= GPTQ_FLT_MAX; }

/// A positive, finite scale (false for NaN), as `usable` in grid.rs.
GPTQ_DEVICE int gptq_usable(float scale) { return scale > 0.0f && gptq_finite(scale); }

/// `x.clamp(0.0, maxq) as uN` for an integral x: NaN and negatives give 0, +inf gives maxq.
GPTQ_DEVICE unsigned int gptq_saturate(float x, float maxq) {
    if (x > maxq) x = maxq;
    if (!(x >= 0.0f)) return 0u;
    return (unsigned int)x;
}

typedef struct {
    float scale;
    unsigned int zero;
} gptq_params;

typedef struct {
    int max_code;
    int symmetric;
    /// Smallest asymmetric zero point (`MinMaxGrid::with_min_zero`; 1 for checkpoint format v1).
    int min_zero;
    /// Shrink steps of the clipping search; 0 without it (0 steps is the plain fit too).
    int clip_steps;
    unsigned int clip_grid;
    float clip_norm;
} gptq_grid;

/// The values of one group of one row: `na` values from `a`, then `nb` from `b`, consecutive
/// values `stride` floats apart (the weights are stored column-major).
typedef struct {
    const float* a;
    int na;
    const float* b;
    int nb;
    long long stride;
} gptq_values;

GPTQ_DEVICE float gptq_value(const gptq_values* v, int k) {
    return k < v->na ? v->a[(long long)k * v->stride] : v->b[(long long)(k - v->na) * v->stride];
}

/// `quantize_value`: clamp(round_half_even(x / scale) + zero, 0, max_code).
GPTQ_DEVICE unsigned int gptq_quantize(float x, gptq_params p, float maxq) {
    float q = FADD(rintf(FDIV(x, p.scale)), (float)p.zero);
    return gptq_saturate(q, maxq);
}

/// `dequantize_code`: scale · (code − zero).
GPTQ_DEVICE float gptq_dequantize(unsigned int code, gptq_params p) {
    return FMUL(p.scale, FSUB((float)code, (float)p.zero));
}

/// `MinMaxGrid::min_max_params`.
GPTQ_DEVICE gptq_params gptq_min_max_params(const gptq_grid* g, float xmin, float xmax) {
    float maxq = (float)g->max_code;
    gptq_params p;
    float scale = FDIV(FSUB(xmax, xmin), maxq);
    if (!gptq_finite(scale)) {
        // The range overflowed f32: divide first.
        scale = FSUB(FDIV(xmax, maxq), FDIV(xmin, maxq));
    }
    p.scale = scale;
    if (g->symmetric) {
        p.zero = ((unsigned int)g->max_code + 1u) / 2u;
        return p;
    }
    p.zero = gptq_saturate(rintf(FDIV(-xmin, scale)), maxq);
    if (p.zero < (unsigned int)g->min_zero) {
        /* Raise the zero point and widen the step so that [xmin, xmax] is still covered. */
        float raised = (float)g->min_zero;
        p.scale = fmaxf(fmaxf(FDIV(xmax, FSUB(maxq, raised)), FDIV(-xmin, raised)), scale);
        p.zero = (unsigned int)g->min_zero;
    }
    return p;
}

/// `MinMaxGrid::clip` over the values scaled by `factor`: the error of each shrink is summed
/// in f64, value by value, as the CPU's iterator sum.
GPTQ_DEVICE gptq_params gptq_clip(const gptq_grid* g, const gptq_values* v, float factor,
                                  float xmin, float xmax) {
    float maxq = (float)g->max_code;
    int n = v->na + v->nb;
    gptq_params best = gptq_min_max_params(g, xmin, xmax);
    double best_err = GPTQ_INFINITY_D;
    for (int i = 0; i < g->clip_steps; ++i) {
        float p = (float)(1.0 - (double)i / (double)g->clip_grid);
        gptq_params params = gptq_min_max_params(g, FMUL(p, xmin), FMUL(p, xmax));
        if (!gptq_usable(params.scale)) continue;
        double err = 0.0;
        for (int k = 0; k < n; ++k) {
            float x = FMUL(gptq_value(v, k), factor);
            float q = gptq_dequantize(gptq_quantize(x, params, maxq), params);
            err = DADD(err, pow((double)fabsf(FSUB(q, x)), (double)g->clip_norm));
        }
        if (err < best_err) {
            best_err = err;
            best = params;
        }
    }
    return best;
}

/// `MinMaxGrid::fit_scaled` (and `fit` for factor 1): the fit of the values times `factor`.
/// The range of the scaled values is the scaled range (rounding is monotonic), which is how the
/// CPU computes it without the clipping search; with it, the CPU scales the values first, which
/// gives the same range, and the clipping error reads the scaled values here too.
GPTQ_DEVICE gptq_params gptq_fit_scaled(const gptq_grid* g, const gptq_values* v, float factor) {
    int n = v->na + v->nb;
    float lo = 0.0f, hi = 0.0f;
    for (int k = 0; k < n; ++k) {
        float x = gptq_value(v, k);
        lo = fminf(lo, x);
        hi = fmaxf(hi, x);
    }
    float xmin = FMUL(lo, factor);
    float xmax = FMUL(hi, factor);
    if (g->symmetric) {
        xmax = fmaxf(xmax, fabsf(xmin));
        if (xmin < 0.0f) xmin = -xmax;
    }
    if (!gptq_usable(gptq_min_max_params(g, xmin, xmax).scale)) {
        // All zeros (or so tiny the step underflows): any grid containing 0 is exact.
        xmin = -1.0f;
        xmax = 1.0f;
    }
    if (g->clip_steps == 0) return gptq_min_max_params(g, xmin, xmax);
    return gptq_clip(g, v, factor, xmin, xmax);
}

/// `weighted_error`: value k goes to partial sum k mod 8, the partial sums are added as
/// ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)).
GPTQ_DEVICE float gptq_weighted_error(const gptq_values* v, const float* importance,
                                      gptq_params p, float maxq) {
    float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int n = v->na + v->nb;
    for (int k = 0; k < n; ++k) {
        float x = gptq_value(v, k);
        float e = FSUB(x, gptq_dequantize(gptq_quantize(x, p, maxq), p));
        s[k & 7] = FADD(s[k & 7], FMUL(importance[k], FMUL(e, e)));
    }
    return FADD(FADD(FADD(s[0], s[1]), FADD(s[2], s[3])), FADD(FADD(s[4], s[5]), FADD(s[6], s[7])));
}

/// `fit_searched`: candidate k fits the values scaled by 1 − k·step; a candidate replaces the
/// best only if strictly cheaper. `candidates` 0 or 1 is the plain fit.
GPTQ_DEVICE gptq_params gptq_fit(const gptq_grid* g, const gptq_values* v, const float* importance,
                                 unsigned int candidates, float shrink_step) {
    gptq_params best = gptq_fit_scaled(g, v, 1.0f);
    if (candidates <= 1u) return best;
    float maxq = (float)g->max_code;
    float best_cost = gptq_weighted_error(v, importance, best, maxq);
    for (unsigned int k = 1u; k < candidates; ++k) {
        float factor = FSUB(1.0f, FMUL((float)k, shrink_step));
        if (factor <= 0.0f) break;
        gptq_params candidate = gptq_fit_scaled(g, v, factor);
        float cost = gptq_weighted_error(v, importance, candidate, maxq);
        if (cost < best_cost) {
            best = candidate;
            best_cost = cost;
        }
    }
    return best;
}

/// Everything the column loop of one block reads and writes. Matrices of `rows` rows are stored
/// column-major (element (r, j) at j·rows + r), so that the threads of a warp, which own
/// consecutive rows, touch consecutive addresses; `upper` is row-major `columns × columns`.
typedef struct {
    float* w;                           // [columns][rows] working weights
    const float* upper;                 // [columns][columns] U, row-major
    const float* importance;            // [columns] 1 / U_jj², the range search's weights
    unsigned char* codes;               // [columns][rows]
    float* errors;                      // [end − start][rows], the block's scaled errors
    float* scales;                      // [slots][rows]
    unsigned short* zeros;              // [slots][rows]
    const unsigned int* slot_of_column; // [columns], GPTQ_FIXED only
    const float* snapshot;              // [end − start][rows], GPTQ_DYNAMIC_BLOCK_START only
    int rows;
    int columns;
    int start;
    int end;
    int mode;
    int group_size;
    unsigned int candidates;
    float shrink_step;
    gptq_grid grid;
} gptq_block;

/// One row through one block: `quantize_row` of column_loop.rs.
GPTQ_DEVICE void gptq_row(const gptq_block* b, int r) {
    const long long rows = b->rows;
    const float maxq = (float)b->grid.max_code;
    int current_slot = -1;
    gptq_params params;
    params.scale = 1.0f;
    params.zero = 0u;
    for (int i = b->start; i < b->end; ++i) {
        int slot;
        if (b->mode == GPTQ_FIXED) {
            slot = (int)b->slot_of_column[i];
        } else {
            slot = i / b->group_size;
            if (i % b->group_size == 0) {
                int group_end = i + b->group_size < b->columns ? i + b->group_size : b->columns;
                gptq_values v;
                v.stride = rows;
                if (b->mode == GPTQ_DYNAMIC_BLOCK_START) {
                    // The block's columns as they were when the block started, then the columns
                    // past the block (untouched by this block).
                    int inside = (group_end < b->end ? group_end : b->end) - i;
                    v.a = b->snapshot + (long long)(i - b->start) * rows + r;
                    v.na = inside;
                    v.b = b->w + (long long)b->end * rows + r;
                    v.nb = group_end - i - inside;
                } else {
                    v.a = b->w + (long long)i * rows + r;
                    v.na = group_end - i;
                    v.b = v.a;
                    v.nb = 0;
                }
                gptq_params fitted =
                    gptq_fit(&b->grid, &v, b->importance + i, b->candidates, b->shrink_step);
                b->scales[(long long)slot * rows + r] = fitted.scale;
                b->zeros[(long long)slot * rows + r] = (unsigned short)fitted.zero;
                current_slot = -1;
            }
        }
        if (slot != current_slot) {
            params.scale = b->scales[(long long)slot * rows + r];
            params.zero = b->zeros[(long long)slot * rows + r];
            current_slot = slot;
        }
        const float x = b->w[(long long)i * rows + r];
        const unsigned int code = gptq_quantize(x, params, maxq);
        b->codes[(long long)i * rows + r] = (unsigned char)code;
        const float* u_row = b->upper + (long long)i * b->columns;
        const float error = FDIV(FSUB(x, gptq_dequantize(code, params)), u_row[i]);
        b->errors[(long long)(i - b->start) * rows + r] = error;
        for (int j = i + 1; j < b->end; ++j) {
            float* wj = b->w + (long long)j * rows + r;
            *wj = FSUB(*wj, FMUL(error, u_row[j]));
        }
    }
}

#ifdef __CUDACC__

GPTQ_DEVICE int gptq_finite_d(double x) { return fabs(x) <= GPTQ_DBL_MAX; }

/// The in-block column loop: one thread per row.
extern "C" __global__ void gptq_column_loop(
    float* w, const float* upper, const float* importance, unsigned char* codes, float* errors,
    float* scales, unsigned short* zeros, const unsigned int* slot_of_column,
    const float* snapshot, int rows, int columns, int start, int end, int mode, int group_size,
    unsigned int candidates, float shrink_step, int max_code, int symmetric, int min_zero, int clip_steps,
    unsigned int clip_grid, float clip_norm) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    gptq_block b;
    b.w = w;
    b.upper = upper;
    b.importance = importance;
    b.codes = codes;
    b.errors = errors;
    b.scales = scales;
    b.zeros = zeros;
    b.slot_of_column = slot_of_column;
    b.snapshot = snapshot;
    b.rows = rows;
    b.columns = columns;
    b.start = start;
    b.end = end;
    b.mode = mode;
    b.group_size = group_size;
    b.candidates = candidates;
    b.shrink_step = shrink_step;
    b.grid.max_code = max_code;
    b.grid.symmetric = symmetric;
    b.grid.min_zero = min_zero;
    b.grid.clip_steps = clip_steps;
    b.grid.clip_grid = clip_grid;
    b.grid.clip_norm = clip_norm;
    gptq_row(&b, r);
}

#define GPTQ_TILE 32

/// `out` (cols × rows, row-major) = transpose of `in` (rows × cols, row-major): a row-major
/// weight becomes column-major. Blocks of 32 × 8 threads, one 32 × 32 tile each. Exact copy.
extern "C" __global__ void gptq_transpose_f32(const float* in, float* out, int rows, int cols) {
    __shared__ float tile[GPTQ_TILE][GPTQ_TILE + 1];
    int c0 = blockIdx.x * GPTQ_TILE;
    int r0 = blockIdx.y * GPTQ_TILE;
    for (int k = threadIdx.y; k < GPTQ_TILE; k += blockDim.y) {
        int r = r0 + k, c = c0 + threadIdx.x;
        if (r < rows && c < cols) tile[k][threadIdx.x] = in[(long long)r * cols + c];
    }
    __syncthreads();
    for (int k = threadIdx.y; k < GPTQ_TILE; k += blockDim.y) {
        int c = c0 + k, r = r0 + threadIdx.x;
        if (r < rows && c < cols) out[(long long)c * rows + r] = tile[threadIdx.x][k];
    }
}

/// Exact widening of activations for the f64 Hessian.
extern "C" __global__ void gptq_f32_to_f64(const float* in, double* out, long long n) {
    long long step = (long long)gridDim.x * blockDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += step) {
        out[k] = (double)in[k];
    }
}

/// H = scale · (Σ x xᵀ), both triangles, from the lower triangle of the column-major sum
/// (entry (i, j), i ≥ j, at j·n + i).
extern "C" __global__ void gptq_finish_hessian_f32(const float* lower, double* out, int n,
                                                    double scale) {
    long long total = (long long)n * n;
    long long step = (long long)gridDim.x * blockDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += step) {
        long long i = k / n, j = k % n;
        long long a = i >= j ? i : j, c = i >= j ? j : i;
        out[k] = DMUL(scale, (double)lower[c * n + a]);
    }
}

extern "C" __global__ void gptq_finish_hessian_f64(const double* lower, double* out, int n,
                                                    double scale) {
    long long total = (long long)n * n;
    long long step = (long long)gridDim.x * blockDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += step) {
        long long i = k / n, j = k % n;
        long long a = i >= j ? i : j, c = i >= j ? j : i;
        out[k] = DMUL(scale, lower[c * n + a]);
    }
}

/// The matrix to factor: entry (i, j) = H[order[i], order[j]] off the diagonal and
/// diagonal[order[i]] + damp on it, where `order` is the reversed quantization order and
/// `diagonal` has the dead columns set to 1. Symmetric, so row- and column-major alike.
extern "C" __global__ void gptq_gather_damped(const double* h, const int* order,
                                              const double* diagonal, double damp, double* out,
                                              int n) {
    long long total = (long long)n * n;
    long long step = (long long)gridDim.x * blockDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += step) {
        long long i = k / n, j = k % n;
        long long oi = order[i], oj = order[j];
        out[k] = i == j ? DADD(diagonal[oi], damp) : h[oi * n + oj];
    }
}

/// U (row-major f32) = L⁻¹ read backwards: U[a, b] = L⁻¹(n−1−a, n−1−b), where L⁻¹ is the lower
/// triangle of the column-major `linv`; zero below the diagonal. Flags a non-finite L⁻¹ entry.
extern "C" __global__ void gptq_reverse_upper(const double* linv, float* upper, int n,
                                              int* nonfinite) {
    long long total = (long long)n * n;
    long long step = (long long)gridDim.x * blockDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += step) {
        long long a = k / n, c = k % n;
        if (c < a) {
            upper[k] = 0.0f;
        } else {
            double v = linv[(n - 1 - c) * n + (n - 1 - a)];
            if (!gptq_finite_d(v)) *nonfinite = 1;
            upper[k] = (float)v;
        }
    }
}

/// Sets *flag when any of the n values is NaN or infinite.
extern "C" __global__ void gptq_find_nonfinite_f64(const double* x, long long n, int* flag) {
    long long step = (long long)gridDim.x * blockDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += step) {
        if (!gptq_finite_d(x[k])) *flag = 1;
    }
}

/// partials[block] = Σ a_k b_k over the block's grid-stride share, reduced in a fixed tree, so
/// the result does not depend on scheduling. Needs 256 threads per block.
extern "C" __global__ void gptq_dot_partials(const double* a, const double* b, long long n,
                                             double* partials) {
    __shared__ double sums[256];
    double acc = 0.0;
    long long step = (long long)gridDim.x * blockDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += step) {
        acc = DADD(acc, DMUL(a[k], b[k]));
    }
    sums[threadIdx.x] = acc;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) sums[threadIdx.x] = DADD(sums[threadIdx.x], sums[threadIdx.x + half]);
        __syncthreads();
    }
    if (threadIdx.x == 0) partials[blockIdx.x] = sums[0];
}

#endif
