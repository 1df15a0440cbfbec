//! Stale connected UDP: after endpoints leave a UDP frontend, connected UDP sockets that
//! the connect hook pointed at them are aborted with `bpf_sock_destroy` (the application
//! sees ECONNABORTED and reconnects, getting a current endpoint).
//!
//! The kernel runs no sendmsg hook for a connected socket that sends without a destination,
//! so such a socket cannot be re-pointed; it can only be aborted. `bpf_sock_destroy` is a
//! kfunc usable from `iter/udp` programs; aya 0.14 does not relocate kfunc calls, so the
//! program calls a marker helper id and [`patch_object`] rewrites that instruction into the
//! kfunc call with this kernel's BTF id before loading. An iterator walks the sockets of
//! the network namespace of the thread that opens it, so [`Purger::purge`] opens one in
//! every network namespace of the node (`/proc/*/ns/net`, `/run/netns/*`).
//!
//! IPv4, IPv4-mapped and IPv6 sockets are handled; the IPv6 destination's offset in
//! `struct sock_common` depends on the kernel's configuration and is relocated (CO-RE)
//! against the running kernel's BTF by aya.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use aya::Ebpf;
use aya::maps::{HashMap, MapData};
use aya::programs::Iter;
use aya::programs::iter::IterLink;

use crate::abi::{self, SvcStaleKey};

/// `call SVC_KFUNC_SOCK_DESTROY_MARKER` as compiled: code 0x85, regs 0, off 0, imm.
const MARKER: [u8; 8] = [0x85, 0x00, 0x00, 0x00, 0xf1, 0xff, 0xff, 0x7f];

/// The BTF id of the kfunc `bpf_sock_destroy` in the running kernel, if it has one.
pub(crate) fn sock_destroy_btf_id() -> Option<(aya::Btf, u32)> {
    let btf = aya::Btf::from_sys_fs().ok()?;
    let id = btf
        .id_by_type_name_kind("bpf_sock_destroy", aya_obj::btf::BtfKind::Func)
        .ok()?;
    Some((btf, id))
}

/// A copy of the object whose marker calls are kfunc calls to BTF id `id`
/// (src_reg = BPF_PSEUDO_KFUNC_CALL, off 0: vmlinux). `None` if no marker was found or the
/// copy is not aligned for ELF parsing.
pub(crate) fn patch_object(object: &[u8], id: u32) -> Option<Vec<u8>> {
    let mut out = object.to_vec();
    if out.as_ptr().align_offset(8) != 0 {
        return None;
    }
    let mut found = false;
    for insn in out.chunks_exact_mut(8) {
        if insn == MARKER {
            insn[1] = 0x20;
            insn[4..8].copy_from_slice(&id.to_le_bytes());
            found = true;
        }
    }
    found.then_some(out)
}

/// The loaded iterator program and the map of endpoints it aborts sockets for.
#[derive(Debug)]
pub(crate) struct Purger {
    bpf: Ebpf,
    stale: HashMap<MapData, SvcStaleKey, u8>,
}

impl Purger {
    /// Loads `udp_destroy` from `bpf` (whose object was patched). Errors are returned as
    /// text: the data plane runs without the purge then.
    pub(crate) fn new(mut bpf: Ebpf, btf: &aya::Btf) -> Result<Self, String> {
        let prog: &mut Iter = bpf
            .program_mut("udp_destroy")
            .ok_or("no udp_destroy program")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        prog.load("udp", btf).map_err(|e| format!("{e:?}"))?;
        let stale = bpf.take_map("v1_stale").ok_or("no v1_stale map")?;
        let stale = HashMap::try_from(stale).map_err(|e| format!("{e}"))?;
        Ok(Purger { bpf, stale })
    }

    /// Aborts connected UDP sockets balanced to any of `removed`, in every network
    /// namespace. Returns how many namespaces were walked.
    pub(crate) fn purge(&mut self, removed: &[SocketAddr]) -> Result<usize, String> {
        let keys: Vec<SvcStaleKey> = removed
            .iter()
            .map(|a| {
                let (addr, family) = abi::addr_words(a.ip());
                SvcStaleKey {
                    addr,
                    port: abi::net_port(a.port()),
                    family,
                    pad: 0,
                }
            })
            .collect();
        if keys.is_empty() {
            return Ok(0);
        }
        for k in &keys {
            self.stale.insert(k, 1, 0).map_err(|e| format!("{e}"))?;
        }
        let result = self.walk();
        for k in &keys {
            let _ = self.stale.remove(k);
        }
        result
    }

    fn walk(&mut self) -> Result<usize, String> {
        let namespaces = network_namespaces();
        let prog: &mut Iter = self
            .bpf
            .program_mut("udp_destroy")
            .ok_or("no udp_destroy program")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        let mut links: Vec<(PathBuf, IterLink)> = Vec::with_capacity(namespaces.len());
        for ns in namespaces {
            let id = prog.attach().map_err(|e| format!("{e}"))?;
            links.push((ns, prog.take_link(id).map_err(|e| format!("{e}"))?));
        }
        let n = links.len();
        // setns changes only the calling thread: a thread of its own visits the namespaces.
        std::thread::spawn(move || {
            for (ns, link) in links {
                let entered = File::open(&ns).ok().is_some_and(|f| {
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
                });
                if !entered {
                    continue;
                }
                if let Ok(mut f) = link.into_file() {
                    let mut buf = Vec::new();
                    let _ = f.read_to_end(&mut buf);
                }
            }
        })
        .join()
        .map_err(|_| "the namespace walker panicked".to_string())?;
        Ok(n)
    }
}

/// One path per network namespace: `/proc/<pid>/ns/net` of every process, `/run/netns/*`.
fn network_namespaces() -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut consider = |p: PathBuf| {
        if let Ok(m) = std::fs::metadata(&p)
            && seen.insert((m.dev(), m.ino()))
        {
            out.push(p);
        }
    };
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            consider(e.path());
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                consider(e.path().join("ns/net"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_call_becomes_a_kfunc_call() {
        let object = crate::loader::OBJECT;
        let patched = patch_object(object, 0x1234).expect("a marker in the object");
        let calls: Vec<&[u8]> = patched
            .chunks_exact(8)
            .filter(|i| i[0] == 0x85 && i[1] == 0x20)
            .collect();
        assert_eq!(calls, [&[0x85, 0x20, 0, 0, 0x34, 0x12, 0, 0][..]]);
        assert!(!patched.chunks_exact(8).any(|i| i == MARKER));
        assert_eq!(patched.len(), object.len());
    }
}
