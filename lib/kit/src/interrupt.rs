//! Leaving nothing behind when interrupted. A tool that makes working
//! directories or starts long-lived processes (a temporary database server)
//! registers them here; once [`install`]ed, SIGTERM, SIGINT and SIGHUP
//! (those not ignored when the tool started, as `nohup` does) are caught
//! by a watcher thread that stops the registered processes (asking first,
//! then killing those that do not stop in time), waits for any
//! [`critical`] section to end, removes the registered directories, and then
//! ends the tool with the signal itself, so its parent sees the status the
//! signal gives. A process registered while that runs is stopped at once.
//!
//! A registration lasts as long as the value [`stop_on_signal`] or
//! [`remove_on_signal`] returns: once the process is reaped or the directory
//! removed in the normal course, dropping it forgets them.

use std::io::Read;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigHandler, Signal};

use crate::error::{Error, Result};

/// The signals that end a tool after cleaning up.
const SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// How long the watcher waits for a critical section to end.
const CRITICAL_WAIT: Duration = Duration::from_secs(600);

/// The write end of the pipe the handler wakes the watcher through.
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// The signal caught, once one is (0 before).
static CAUGHT: AtomicI32 = AtomicI32::new(0);
/// Critical sections running now.
static CRITICAL: AtomicUsize = AtomicUsize::new(0);
/// The next registration's number.
static NEXT: AtomicU64 = AtomicU64::new(0);
/// What to clean up.
static REGISTERED: Mutex<Registered> =
    Mutex::new(Registered { stopping: false, processes: Vec::new(), dirs: Vec::new() });

struct Registered {
    /// Set once the watcher has taken the registrations to clean up.
    stopping: bool,
    /// Process IDs, with how long each may take to stop once asked.
    processes: Vec<(u64, i32, Duration)>,
    dirs: Vec<(u64, PathBuf)>,
}

/// A registered process or directory; dropping it ends the registration.
#[must_use = "the registration ends when this is dropped"]
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        registered.processes.retain(|(id, ..)| *id != self.0);
        registered.dirs.retain(|(id, _)| *id != self.0);
    }
}

/// Registers a child process to stop on a signal: asked with SIGTERM, then
/// killed if it still runs after `grace`. One registered while the tool is
/// already stopping is asked to stop at once.
pub fn stop_on_signal(pid: u32, grace: Duration) -> Registration {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if registered.stopping {
        let _ = signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM);
    } else {
        registered.processes.push((id, pid as i32, grace));
    }
    Registration(id)
}

/// Registers a directory (and everything in it) to remove on a signal. One
/// registered while the tool is already stopping is removed at once (the
/// watcher may have made its last round).
pub fn remove_on_signal(dir: &Path) -> Registration {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if registered.stopping {
        let _ = crate::workdir::remove_tree(dir);
    }
    registered.dirs.push((id, dir.to_path_buf()));
    Registration(id)
}

/// A section of work that a signal must not cut short (renaming a restored
/// copy into place): the watcher removes nothing while one runs.
#[must_use = "the section ends when this is dropped"]
pub struct Critical(());

impl Drop for Critical {
    fn drop(&mut self) {
        CRITICAL.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts a critical section; it ends when the value is dropped.
pub fn critical() -> Critical {
    CRITICAL.fetch_add(1, Ordering::SeqCst);
    Critical(())
}

/// When a signal was caught, waits (bounded) for the watcher to end the
/// process with it, so the tool's exit status is the signal's, not that of
/// an error the interruption caused. Returns at once otherwise.
pub fn wait_if_interrupted() {
    if CAUGHT.load(Ordering::SeqCst) == 0 {
        return;
    }
    // The watcher's own bounds (a server's grace, a critical section) come first.
    let started = Instant::now();
    while started.elapsed() < CRITICAL_WAIT * 2 {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Catches SIGTERM, SIGINT and SIGHUP from now on, cleaning up what is
/// registered before the signal ends the process. Call once, early in `main`.
pub fn install() -> Result<()> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::io("cannot create a pipe", e.into()))?;
    WAKE.store(write.into_raw_fd(), Ordering::SeqCst);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || watch(std::fs::File::from(read)))
        .map_err(|e| Error::io("cannot start the signal watcher", e))?;
    let action =
        signal::SigAction::new(SigHandler::Handler(on_signal), signal::SaFlags::SA_RESTART, signal::SigSet::empty());
    for caught in SIGNALS {
        let failed = |e: nix::errno::Errno| Error::io(format!("cannot catch {caught}"), e.into());
        // SAFETY: the handler only stores a number and writes one byte to a
        // pipe, which are async-signal-safe.
        let before = unsafe { signal::sigaction(caught, &action) }.map_err(failed)?;
        if before.handler() == SigHandler::SigIgn {
            // Ignored by whoever started us (nohup, a background job): it stays ignored.
            // SAFETY: putting back the action that was in place.
            unsafe { signal::sigaction(caught, &before) }.map_err(failed)?;
        }
    }
    Ok(())
}

extern "C" fn on_signal(number: nix::libc::c_int) {
    let saved = nix::errno::Errno::last_raw();
    let _ = CAUGHT.compare_exchange(0, number, Ordering::SeqCst, Ordering::SeqCst);
    let fd = WAKE.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = number as u8;
        // SAFETY: write(2) on a pipe is async-signal-safe; the buffer is one valid byte.
        unsafe { nix::libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
    nix::errno::Errno::set_raw(saved);
}

/// Waits for the first signal, cleans up, and ends the process with it.
fn watch(mut wake: std::fs::File) {
    let mut byte = [0u8; 1];
    if wake.read_exact(&mut byte).is_err() {
        return;
    }
    let Ok(caught) = Signal::try_from(i32::from(byte[0])) else { return };
    // From here on, what registers is stopped at once (see stop_on_signal).
    // The directories as they are now: the main thread may end a
    // registration (its error path dropping a working directory it cannot
    // fully remove itself) while the processes are stopped.
    let (processes, mut dirs) = {
        let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        registered.stopping = true;
        (registered.processes.clone(), registered.dirs.clone())
    };
    for (_, pid, grace) in processes {
        stop(nix::unistd::Pid::from_raw(pid), grace);
    }
    let asked = Instant::now();
    while CRITICAL.load(Ordering::SeqCst) > 0 && asked.elapsed() < CRITICAL_WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The main thread may still be writing into a directory, or making and
    // registering one (a temporary server's, as the signal came): each round
    // adds the registrations made since.
    for _ in 0..20 {
        for registration in REGISTERED.lock().unwrap_or_else(|e| e.into_inner()).dirs.iter() {
            if !dirs.contains(registration) {
                dirs.push(registration.clone());
            }
        }
        let mut left = false;
        for (_, dir) in &dirs {
            left |= crate::workdir::remove_tree(&dir).is_err() || dir.exists();
        }
        if !left {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: restoring the default action of a signal is always sound.
    let _ = unsafe { signal::signal(caught, SigHandler::SigDfl) };
    let _ = signal::raise(caught);
    // Not reached for these signals; if it were, end as a shell reports a signal.
    std::process::exit(128 + caught as i32);
}

/// Asks `pid` to stop and waits up to `grace` for it to end, then kills it.
fn stop(pid: nix::unistd::Pid, grace: Duration) {
    if signal::kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let asked = Instant::now();
    while running(pid) {
        if asked.elapsed() > grace {
            let _ = signal::kill(pid, Signal::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True while `pid` exists and has not exited (an exited child not yet
/// reaped is a zombie: state `Z` in `/proc/<pid>/stat`).
fn running(pid: nix::unistd::Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}
