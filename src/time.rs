//! The runtime's clock: the one place the Worker reads the time, which the
//! cores then take as a value (`sesh_core::time::Millis`).

pub use sesh_core::time::Millis;

/// The current time on this target. On wasm32 it is the runtime's clock,
/// read with the static `Date.now()` (no `Date` object per call: this runs
/// several times per frame).
pub fn now_ms() -> Millis {
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now() as Millis
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        chrono::Utc::now().timestamp_millis()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2025() {
        assert!(super::now_ms() > 1_735_689_600_000);
    }
}
