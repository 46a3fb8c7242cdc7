//! Progress reporting: the library reports through this trait; the binary
//! draws bars (indicatif) and the service logs (tracing).

/// Receives progress of a long operation. Implementations must be cheap:
/// they are called from hot loops (at most once per chunk or row batch).
pub trait Progress: Send + Sync {
    /// A phase starts (e.g. "reading customers"), with the expected total
    /// amount in `unit` if known.
    fn phase(&self, _name: &str, _total: Option<u64>, _unit: &'static str) {}
    /// `n` more units of the current phase are done.
    fn advance(&self, _n: u64) {}
    /// The current phase is done.
    fn finish_phase(&self) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {}
