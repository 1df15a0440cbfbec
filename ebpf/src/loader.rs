//! Preflight, loading, attaching and pinning; adoption of pinned state; cleanup.
//!
//! Layout under the pin root (default `/sys/fs/bpf/svcplane/`):
//! `v1_services`, `v1_conns`, `v1_refused`, `v1_rr`, `v1_udp_sticky`, `v1_rev`, `v1_affinity`, `v1_tcp_peer` (maps) and
//! `links/v1_<program>` (one cgroup link per program). A start loads the programs against
//! the pinned maps (creating them if absent), attaches them next to the links already
//! there and renames the new link pins over the old ones: both run for a moment (the
//! second sees an already rewritten address and passes), so no connect goes unbalanced.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};

use crate::EbpfError;
use crate::abi::{SvcConns, SvcKey, SvcValue};
use crate::maps::BpfMaps;
use crate::stale::{self, Purger};
use crate::sync::FrontendSet;

/// The compiled programs (`bpf/svcplane.bpf.c`, built by `build.rs`); empty when clang or
/// libbpf's headers were missing at build time.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/svcplane.bpf.o"));

/// Map names in the object (and their pin names).
pub(crate) const MAPS: [&str; 8] = [
    "v1_services",
    "v1_conns",
    "v1_refused",
    "v1_rr",
    "v1_udp_sticky",
    "v1_rev",
    "v1_affinity",
    "v1_tcp_peer",
];

/// Programs in the object.
pub(crate) const PROGRAMS: [&str; 8] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
];

/// Prefix of link pin names (layout version of the programs).
const LINK_PREFIX: &str = "v1_";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// What a start leaves behind: the services map, what it holds, and the cgroup.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) maps: BpfMaps,
    pub(crate) current: FrontendSet,
    pub(crate) cgroup: PathBuf,
    /// Aborts connected UDP sockets of removed endpoints; `None` where the kernel or the
    /// object patch does not allow it.
    pub(crate) purger: Option<Purger>,
}

/// Everything a start does before the first sync.
pub(crate) fn load(
    pin_root: &Path,
    cgroup: Option<&Path>,
    tcp_peer_vip: bool,
) -> Result<Loaded, EbpfError> {
    if OBJECT.is_empty() {
        return Err(EbpfError::NotBuilt);
    }
    let cgroup = preflight(pin_root, cgroup)?;
    let pins: Vec<(&str, PathBuf)> = MAPS.iter().map(|m| (*m, pin_root.join(m))).collect();
    let mut loader = EbpfLoader::new();
    let tcp_peer_vip = u32::from(tcp_peer_vip);
    loader.override_global("cfg_tcp_peer_vip", &tcp_peer_vip, true);
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let patched = stale::sock_destroy_btf_id()
        .and_then(|(btf, id)| stale::patch_object(OBJECT, id).map(|o| (btf, o)));
    let object: &[u8] = patched.as_ref().map_or(OBJECT, |(_, o)| &o[..]);
    let mut bpf = loader.load(object).map_err(classify)?;
    attach_all(&mut bpf, pin_root, &cgroup)?;
    let services = take_hash::<SvcValue>(&mut bpf, "v1_services")?;
    let conns = take_hash::<SvcConns>(&mut bpf, "v1_conns")?;
    let mut maps = BpfMaps::new(services, conns);
    let current = maps.adopt().map_err(|source| EbpfError::Map {
        name: "v1_services",
        source,
    })?;
    // Counters are for status only: a failure here must not stop routing.
    match maps.prune_counters(&current) {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "stale connection counters (v1_conns) removed"),
        Err(e) => tracing::warn!(error = %e, "removing stale connection counters (v1_conns)"),
    }
    let purger = match patched {
        Some((btf, _)) => match Purger::new(bpf, &btf) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "bpf_sock_destroy unavailable: connected UDP sockets keep a removed endpoint until they reconnect");
                None
            }
        },
        None => {
            tracing::warn!(
                "no bpf_sock_destroy in this kernel: connected UDP sockets keep a removed endpoint until they reconnect"
            );
            None
        }
    };
    Ok(Loaded {
        maps,
        current,
        cgroup,
        purger,
    })
}

/// The object's hash map `name`, keyed by [`SvcKey`], taken out of `bpf`.
fn take_hash<V: aya::Pod>(
    bpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, SvcKey, V>, EbpfError> {
    let map = bpf.take_map(name).ok_or(EbpfError::MissingInObject(name))?;
    HashMap::try_from(map).map_err(|source| EbpfError::Map { name, source })
}

fn attach_all(bpf: &mut Ebpf, pin_root: &Path, cgroup: &Path) -> Result<(), EbpfError> {
    let links = pin_root.join("links");
    std::fs::create_dir_all(&links).map_err(|source| EbpfError::Io {
        what: "create",
        path: links.clone(),
        source,
    })?;
    let cg = File::open(cgroup).map_err(|source| EbpfError::Io {
        what: "open cgroup",
        path: cgroup.to_path_buf(),
        source,
    })?;
    for name in PROGRAMS {
        let perr = |source| EbpfError::Program { name, source };
        let prog: &mut CgroupSockAddr = bpf
            .program_mut(name)
            .ok_or(EbpfError::MissingInObject(name))?
            .try_into()
            .map_err(perr)?;
        prog.load().map_err(|e| classify_program(name, e))?;
        // With bpf_link_create (kernel ≥ 5.7) `Single` means flags 0: cgroup links always
        // coexist with other links, which the zero-gap replacement relies on.
        let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(perr)?;
        let link = prog.take_link(id).map_err(perr)?;
        let link = FdLink::try_from(link).map_err(|e| EbpfError::Link {
            name,
            detail: e.to_string(),
        })?;
        let path = links.join(format!("{LINK_PREFIX}{name}"));
        // bpffs reserves names with a dot.
        let tmp = links.join(format!("new_{LINK_PREFIX}{name}"));
        let _ = std::fs::remove_file(&tmp);
        link.pin(&tmp).map_err(|e| EbpfError::Link {
            name,
            detail: e.to_string(),
        })?;
        // Replaces (and so detaches) the link of a previous start, if any.
        std::fs::rename(&tmp, &path).map_err(|source| EbpfError::Io {
            what: "pin link",
            path,
            source,
        })?;
    }
    Ok(())
}

/// Removes every pinned map and link under `pin_root` and waits (up to 2 s) until the
/// links are gone: removing a link pin detaches it once no process holds it open, and the
/// kernel releases it asynchronously. A missing pin root is not an error.
pub fn cleanup(pin_root: &Path) -> Result<(), EbpfError> {
    let mut ids = Vec::new();
    if let Ok(dir) = std::fs::read_dir(pin_root.join("links")) {
        for e in dir.flatten() {
            if let Ok(link) = PinnedLink::from_pin(e.path())
                && let Ok(info) = FdLink::from(link).info()
            {
                ids.push(info.program_id());
            }
        }
    }
    match std::fs::remove_dir_all(pin_root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        r => r.map_err(|source| EbpfError::Io {
            what: "remove",
            path: pin_root.to_path_buf(),
            source,
        })?,
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        // A program outlives its link's detach by nothing: it is freed by the release
        // that detaches the link (which happens after an RCU grace period and a work item).
        let left: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| ids.contains(id))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(EbpfError::Link {
                name: "cleanup",
                detail: format!(
                    "programs {left:?} are still attached: a process (a running svcplane?) holds their links open"
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// === preflight ===

/// Root, a cgroup2 directory to attach to, bpffs under the pin root. Returns the cgroup.
fn preflight(pin_root: &Path, cgroup: Option<&Path>) -> Result<PathBuf, EbpfError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(EbpfError::NotRoot);
    }
    let cgroup = match cgroup {
        Some(p) => p.to_path_buf(),
        None => {
            let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| {
                EbpfError::Io {
                    what: "read",
                    path: "/proc/self/mountinfo".into(),
                    source,
                }
            })?;
            cgroup2_mount(&info).ok_or(EbpfError::NoCgroup2)?
        }
    };
    if fs_magic(&cgroup) != Some(CGROUP2_SUPER_MAGIC) {
        return Err(EbpfError::NotCgroup2 { path: cgroup });
    }
    ensure_bpffs(pin_root)?;
    Ok(cgroup)
}

/// Mounts bpffs on `/sys/fs/bpf` if the pin root is below it and it is not bpffs yet, then
/// creates the pin root and checks it is on bpffs.
fn ensure_bpffs(pin_root: &Path) -> Result<(), EbpfError> {
    let sys = Path::new("/sys/fs/bpf");
    if pin_root.starts_with(sys) && fs_magic(sys) != Some(BPF_FS_MAGIC) {
        nix::mount::mount(
            Some("bpf"),
            sys,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| EbpfError::Bpffs {
            path: sys.to_path_buf(),
            source: io::Error::from(e),
        })?;
    }
    std::fs::create_dir_all(pin_root).map_err(|source| EbpfError::Io {
        what: "create",
        path: pin_root.to_path_buf(),
        source,
    })?;
    if fs_magic(pin_root) != Some(BPF_FS_MAGIC) {
        return Err(EbpfError::Bpffs {
            path: pin_root.to_path_buf(),
            source: io::Error::other("not on a bpf filesystem"),
        });
    }
    Ok(())
}

fn fs_magic(path: &Path) -> Option<i64> {
    nix::sys::statfs::statfs(path)
        .ok()
        .map(|s| s.filesystem_type().0)
}

/// The mount point of the first cgroup2 filesystem in a `/proc/self/mountinfo` text.
pub(crate) fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// A load error caused by the kernel refusing BPF becomes [`EbpfError::BpfUnavailable`].
fn classify(e: aya::EbpfError) -> EbpfError {
    match refused(&e) {
        Some(io) => EbpfError::BpfUnavailable {
            detail: format!("{e}: {io}"),
        },
        None => EbpfError::Load(e),
    }
}

fn classify_program(name: &'static str, e: aya::programs::ProgramError) -> EbpfError {
    match refused(&e) {
        Some(io) => EbpfError::BpfUnavailable {
            detail: format!("loading {name}: {io}"),
        },
        None => EbpfError::Program { name, source: e },
    }
}

fn refused(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && matches!(
                io.raw_os_error(),
                Some(libc::EPERM | libc::ENOSYS | libc::EACCES)
            )
        {
            return Some(io.to_string());
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let info = "\
24 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("24 30 0:22 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }
}
