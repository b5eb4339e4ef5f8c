//! This backend's errors: every CUDA failure as a [`GptqError`] naming the backend, and the
//! checks that turn a missing library or symbol into one instead of a panic inside cudarc.

use gptq_core::{GptqError, Result};

/// The backend's name in errors and reports.
pub(crate) const NAME: &str = "cuda";

/// A [`GptqError::Backend`] of this backend.
pub(crate) fn backend_error(message: impl Into<String>) -> GptqError {
    GptqError::Backend {
        backend: NAME,
        message: message.into(),
    }
}

/// A [`GptqError::Unsupported`] of this backend.
pub(crate) fn unsupported(what: impl Into<String>) -> GptqError {
    GptqError::Unsupported {
        backend: NAME,
        what: what.into(),
    }
}

/// Adds what was being done to a CUDA library error.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| backend_error(format!("{}: {e}", what())))
    }
}

/// Bytes as a short human-readable size, for out-of-memory messages.
pub(crate) fn size_string(bytes: usize) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes as f64 >= 1024.0 * MIB {
        format!("{:.2} GiB", bytes as f64 / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

/// A dimension as the `int` the CUDA libraries take.
pub(crate) fn int(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| {
        unsupported(format!(
            "{what} of {value}: the CUDA libraries take sizes below 2^31"
        ))
    })
}

/// Checks that a shared library of cudarc can be loaded and has every symbol this crate calls,
/// so that a missing one becomes an error here instead of a panic inside cudarc later.
macro_rules! check_library {
    ($name:expr, $sys:path, [$($symbol:expr),* $(,)?]) => {{
        use $sys as sys;
        // SAFETY: loading a CUDA library runs its initializers, which is what using it requires.
        if !unsafe { sys::is_culib_present() } {
            Err(backend_error(format!(
                "the {} library was not found (looked for lib{}.so.13, .so.12, ...): install the \
                 CUDA 13 (or 12) libraries, or add their folder to LD_LIBRARY_PATH",
                $name, $name
            )))
        } else {
            // SAFETY: it was just found, so `culib` loads it instead of panicking; the symbols
            // are only looked up, never called through these pointers.
            let library = unsafe { sys::culib() };
            let missing: Vec<&str> = [$($symbol),*]
                .into_iter()
                .filter(|symbol: &&str| unsafe { library.get::<*const c_void>(symbol.as_bytes()) }.is_err())
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(backend_error(format!(
                    "the {} library found lacks {missing:?}: it is older than this build needs",
                    $name
                )))
            }
        }
    }};
}
