//! Compiles `bpf/*.bpf.c` with clang into `OUT_DIR`; `src/programs.rs` embeds the objects.

use std::path::{Path, PathBuf};
use std::process::Command;

const FLAGS: &[&str] = &[
    "-O2",
    // aya needs BTF in the object.
    "-g",
    "-target",
    "bpf",
    // v3: the return value of __sync_fetch_and_add (round-robin counters).
    "-mcpu=v3",
    // <asm/types.h> on Debian.
    "-I/usr/include/x86_64-linux-gnu",
    "-Wall",
    "-Werror",
];

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed=bpf");
    // Without clang or libbpf's headers the crate still builds (so `cargo run -- demo` works on
    // a bare machine): the object is left empty and the ebpf mode refuses to start, saying why.
    let version = Command::new(&clang).arg("--version").output();
    let missing = if !matches!(&version, Ok(o) if o.status.success()) {
        Some(format!(
            "`{clang}` not found (the eBPF programs are C compiled by clang): install it with \
             `apt-get install -y clang llvm libbpf-dev` (or set CLANG=/path/to/clang)"
        ))
    } else if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        Some("<bpf/bpf_helpers.h> not found: install `libbpf-dev`".to_string())
    } else {
        None
    };
    if let Some(why) = missing {
        println!("cargo:warning=svcplane-ebpf is built without its eBPF programs: {why}");
        // Checked again on every build until they can be compiled.
        println!("cargo:rerun-if-changed=/usr/include/bpf/bpf_helpers.h");
        println!("cargo:rerun-if-changed=/usr/bin/{clang}");
        let obj = out.join("svcplane.bpf.o");
        return std::fs::write(&obj, b"").map_err(|e| format!("write {}: {e}", obj.display()));
    }
    let dir = Path::new("bpf");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    for src in sources {
        let stem = src
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".bpf.c"))
            .ok_or_else(|| format!("bad source name {}", src.display()))?;
        let obj = out.join(format!("{stem}.bpf.o"));
        let status = Command::new(&clang)
            .args(FLAGS)
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
            .map_err(|e| format!("run {clang}: {e}"))?;
        if !status.success() {
            return Err(format!("clang failed on {} ({status})", src.display()));
        }
    }
    Ok(())
}
