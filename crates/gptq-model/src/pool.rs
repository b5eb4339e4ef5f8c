//! Recycled f32 buffers for the forward pass's temporaries.
//!
//! A decoder layer on a batch of a few thousand tokens allocates ~100 MB of temporaries
//! (normed input, q/k/v, attention output, gate/up). Large allocations are memory-mapped
//! fresh by the system allocator and returned on free, so every call page-faults through
//! all of it again (~25k faults per call on 8 × 512 tokens; up to ~15 % of the layer's time on
//! two cores, measured with noisy timings).
//! Recycling the temporaries here keeps their pages mapped between calls, and fresh large
//! buffers are advised to use transparent huge pages (2 MiB instead of 4 KiB pages: 512×
//! fewer faults; on 16 × 512 tokens: 224k → 38k faults, 674 → 570 ms per layer).

use std::sync::Mutex;

use ndarray::Array2;

struct Pool {
    buffers: Vec<Vec<f32>>,
    /// Bytes held in `buffers`.
    held: usize,
    /// Most bytes to hold.
    limit: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    buffers: Vec::new(),
    held: 0,
    limit: DEFAULT_BUFFER_POOL_BYTES,
});

/// Default cap on recycled memory: enough for every temporary of a layer on 8 sequences of
/// 512 tokens of a 2k-wide model, small next to the model itself.
pub const DEFAULT_BUFFER_POOL_BYTES: usize = 512 << 20;

fn bytes(v: &Vec<f32>) -> usize {
    v.capacity() * std::mem::size_of::<f32>()
}

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    // A panic while holding the lock cannot leave the pool inconsistent in a harmful way.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets how many bytes of freed forward-pass temporaries are kept for reuse (default
/// 512 MiB); 0 disables recycling and frees what is held.
pub fn set_buffer_pool_limit(bytes: usize) {
    let mut p = lock();
    p.limit = bytes;
    while p.held > p.limit {
        let v = p.buffers.pop().expect("held > 0 implies a buffer");
        p.held -= self::bytes(&v);
    }
}

/// A `[rows, cols]` array whose contents are unspecified (stale values of a recycled buffer,
/// or zeros), from a recycled buffer when one is large enough. For outputs the caller
/// overwrites entirely: not zero-filling them saved about 1 % of a calibration run's time on
/// two cores (memset and kernel page clearing, 2.5 % → 1.6 % of a profile).
pub(crate) fn scratch(rows: usize, cols: usize) -> Array2<f32> {
    let n = rows * cols;
    let reused = {
        let mut p = lock();
        // Best fit: the smallest buffer that holds n, so big buffers stay for big requests.
        let best = p
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= n)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        best.map(|i| {
            let v = p.buffers.swap_remove(i);
            p.held -= bytes(&v);
            v
        })
    };
    let v = match reused {
        Some(mut v) => {
            // The stale values stay (they are initialized, so handing them out is sound); only
            // a grown tail is written.
            v.truncate(n);
            v.resize(n, 0.0);
            v
        }
        None => fresh_zeroed(n),
    };
    Array2::from_shape_vec((rows, cols), v).expect("length is rows * cols")
}

/// A new zeroed buffer of `n` floats. `alloc_zeroed` lets the allocator hand out fresh
/// (already zero) pages without writing them, so the huge-page advice below still applies
/// when they are first touched.
fn fresh_zeroed(n: usize) -> Vec<f32> {
    if n == 0 {
        return Vec::new();
    }
    let layout = std::alloc::Layout::array::<f32>(n).expect("buffer size overflows");
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<f32>();
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    advise_huge_pages(ptr.cast::<u8>(), layout.size());
    // SAFETY: allocated by the global allocator with the layout of `[f32; n]`; all-zero bytes
    // are valid f32 values (0.0).
    unsafe { Vec::from_raw_parts(ptr, n, n) }
}

/// Asks Linux to back the 2 MiB-aligned interior of `[ptr, ptr + len)` with transparent huge
/// pages. Advice only: contents are unchanged, and where THP is off the call fails harmlessly.
#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + len) / HUGE * HUGE;
    if end > start {
        // SAFETY: the range lies inside a live allocation of ours, and MADV_HUGEPAGE neither
        // unmaps nor changes its contents. The result is ignored: the advice is optional.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *mut u8, _len: usize) {}

/// Hands an array no longer needed back for reuse by later forward passes (or frees it if
/// the pool is full). Optional: callers that drop large activations every layer (e.g.
/// after accumulating a Hessian from them) save the page faults of re-allocating them.
pub fn recycle_buffer(a: Array2<f32>) {
    recycle(a)
}

/// See [`recycle_buffer`].
pub(crate) fn recycle(a: Array2<f32>) {
    let (v, _) = a.into_raw_vec_and_offset();
    // Small buffers are cheap to allocate; only the large ones are worth keeping.
    if bytes(&v) < (1 << 20) {
        return;
    }
    let mut p = lock();
    if p.held + bytes(&v) <= p.limit {
        p.held += bytes(&v);
        p.buffers.push(v);
    }
}
