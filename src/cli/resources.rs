//! `--threads` and `--buffer-memory`: one run's `[resources]`, over the
//! policy's (docs/POLICY.md).

use clap::Args;
use custos::policy::{check_threads, parse_buffer_memory, Policy};

#[derive(Args, Clone, Debug, Default)]
pub struct ResourceArgs {
    /// Threads for the parallel stages, 1 to 256 (default: the policy's
    /// `[resources] threads`, or one per core).
    #[arg(long, value_name = "N", value_parser = threads)]
    threads: Option<u32>,
    /// Buffers to fill, 32MiB to 16GiB, e.g. 64MiB (default: the policy's
    /// `[resources] buffer_memory`, or 256MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_buffer_memory)]
    buffer_memory: Option<u64>,
}

fn threads(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    check_threads(n)
}

impl ResourceArgs {
    /// The policy with this run's settings in its `[resources]`.
    pub fn apply(&self, mut policy: Policy) -> Policy {
        if let Some(n) = self.threads {
            policy.resources.threads = Some(n);
        }
        if let Some(m) = self.buffer_memory {
            policy.resources.buffer_memory = m;
        }
        policy
    }
}
