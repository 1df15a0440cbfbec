//! The open files limit. Every frontend takes one socket per worker and every proxied
//! connection two, so 10,000 two-port Services on two workers need 40,000 descriptors
//! before the first connection: more than common defaults (1024, 20,000). Like HAProxy
//! and Envoy, the proxy raises its soft limit at start; as root it also raises the hard
//! limit, up to the kernel's `fs.nr_open`.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// What the proxy aims for when the kernel allows it.
pub const WANTED: u64 = 1 << 20;

/// The soft limit before and after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub before: u64,
    pub after: u64,
}

impl OpenFiles {
    pub fn raised(&self) -> bool {
        self.after > self.before
    }
}

/// Raises `RLIMIT_NOFILE` towards [`WANTED`]: soft and hard when permitted (root), else
/// the soft limit to the hard one. Never lowers either.
pub fn raise_open_files() -> nix::Result<OpenFiles> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let target = wanted(soft, hard, nr_open());
    if target.0 > soft && setrlimit(Resource::RLIMIT_NOFILE, target.0, target.1).is_err() {
        // Not allowed to raise the hard limit: take what it allows.
        setrlimit(Resource::RLIMIT_NOFILE, hard.max(soft), hard)?;
    }
    let (after, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(OpenFiles {
        before: soft,
        after,
    })
}

/// The (soft, hard) pair to ask for.
fn wanted(soft: u64, hard: u64, nr_open: Option<u64>) -> (u64, u64) {
    let ceiling = nr_open.map_or(WANTED, |n| n.min(WANTED));
    let hard = hard.max(ceiling);
    (soft.max(ceiling).min(hard), hard)
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_for_the_ceiling_and_never_lowers() {
        assert_eq!(wanted(1024, 4096, Some(1 << 20)), (WANTED, WANTED));
        assert_eq!(wanted(1024, 4096, Some(65536)), (65536, 65536));
        assert_eq!(wanted(1024, 4096, None), (WANTED, WANTED));
        // Already higher than the ceiling: kept.
        assert_eq!(wanted(2 << 20, 4 << 20, Some(1 << 20)), (2 << 20, 4 << 20));
    }

    #[test]
    fn raising_leaves_at_least_the_old_soft_limit() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let l = raise_open_files().unwrap();
        assert_eq!(l.before, soft);
        assert!(l.after >= soft.max(hard.min(WANTED)));
    }
}
