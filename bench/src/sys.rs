//! Small system helpers: running commands, entering namespaces, pinning threads, CPU time.

use std::fs::File;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{CloneFlags, CpuSet};
use nix::unistd::Pid;

use crate::error::{BenchError, Result};

/// Runs `program args...`, returns its stdout; a non-zero exit is an error with stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| BenchError::io(format!("cannot run {program}"), e))?;
    if !out.status.success() {
        return Err(BenchError::Command {
            cmd: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args...` with `input` on stdin (e.g. `iptables-restore`), inside network
/// namespace `ns`.
pub(crate) fn run_in_with_input(ns: &str, program: &str, args: &[&str], input: &str) -> Result<()> {
    use std::io::Write as _;
    use std::process::Stdio;
    let netns = format!("--net=/run/netns/{ns}");
    let mut child = Command::new("nsenter")
        .arg(&netns)
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::io(format!("cannot run {program}"), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| BenchError::io(format!("{program}: writing its input"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| BenchError::io(format!("{program}: waiting"), e))?;
    if !out.status.success() {
        return Err(BenchError::Command {
            cmd: format!("{program} {} (in {ns})", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Whether `program` is on PATH (or an existing path).
pub(crate) fn have_tool(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).exists();
    }
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .any(|d| std::fs::metadata(d.join(program)).is_ok_and(|m| m.is_file()))
    })
}

/// Moves the calling thread into network namespace `ns` (by name, `/run/netns/NAME`).
pub(crate) fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let fd = File::open(&path).map_err(|e| BenchError::io(format!("open {path}"), e))?;
    nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|e| BenchError::sys("setns", e))
}

/// Pins the calling thread to one CPU.
pub(crate) fn pin_thread(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)
        .map_err(|e| BenchError::sys(format!("cpu {cpu}"), e))?;
    nix::sched::sched_setaffinity(Pid::from_raw(0), &set)
        .map_err(|e| BenchError::sys(format!("pin to cpu {cpu}"), e))
}

/// Spawns a named thread that enters `ns`, pins itself to `cpu` and runs `f`.
pub(crate) fn spawn_in<T: Send + 'static>(
    name: &str,
    ns: &str,
    cpu: Option<usize>,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let ns = ns.to_string();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            enter_netns(&ns)?;
            if let Some(cpu) = cpu {
                pin_thread(cpu)?;
            }
            f()
        })
        .map_err(|e| BenchError::io("spawn a thread", e))
}

/// Joins a thread spawned by [`spawn_in`]; a panic becomes an error.
pub(crate) fn join<T>(h: JoinHandle<Result<T>>, what: &str) -> Result<T> {
    h.join()
        .map_err(|_| BenchError::mode(what, "thread panicked"))?
}

/// CPU time (user + system) of the calling thread.
pub(crate) fn thread_cpu() -> Duration {
    rusage(nix::sys::resource::UsageWho::RUSAGE_THREAD)
}

/// CPU time (user + system) of this process, every thread.
pub(crate) fn process_cpu() -> Duration {
    rusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
}

fn rusage(who: nix::sys::resource::UsageWho) -> Duration {
    match nix::sys::resource::getrusage(who) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::from_secs(u64::try_from(tv.tv_sec()).unwrap_or(0))
                    + Duration::from_micros(u64::try_from(tv.tv_usec()).unwrap_or(0))
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// CPU time (utime + stime) of another process, from `/proc/PID/stat`.
pub(crate) fn pid_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state (field 3).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports these in USER_HZ, 100 on every supported architecture.
    Some(Duration::from_millis(ticks * 10))
}

/// Busy and total jiffies of every CPU together (`/proc/stat`'s `cpu` line).
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Waits until the machine is quiet: the CPUs together less than `max_busy` busy over two
/// consecutive 100 ms windows, or `limit` passed. Deleting a network namespace is finished
/// by the kernel afterwards, on a worker thread (its sockets, thousands in TIME_WAIT after a
/// connection test, are torn down there), and that work would otherwise run during the next
/// mode's measurements. Returns how long it waited and whether the machine became quiet.
pub(crate) fn wait_quiet(max_busy: f64, limit: Duration) -> (Duration, bool) {
    let started = std::time::Instant::now();
    let mut quiet_windows = 0;
    let Some(mut last) = cpu_jiffies() else {
        return (Duration::ZERO, true);
    };
    while started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
        let Some(now) = cpu_jiffies() else {
            return (started.elapsed(), true);
        };
        let (busy, total) = (now.0 - last.0, now.1 - last.1);
        last = now;
        let quiet = total > 0 && (busy as f64) < max_busy * total as f64;
        quiet_windows = if quiet { quiet_windows + 1 } else { 0 };
        if quiet_windows >= 2 {
            return (started.elapsed(), true);
        }
    }
    (started.elapsed(), false)
}
