//! The pipes between a pipeline's stages: telling one, and widening it so
//! frames move in few system calls.

/// How wide a pipe is made: room for a large frame's worth of bytes.
const WIDTH: i32 = 1 << 20;

/// True when the file descriptor is a pipe.
pub fn is_pipe(fd: i32) -> bool {
    nix::sys::stat::fstat(fd).map(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFIFO).unwrap_or(false)
}

/// Widens the pipe on `fd` to 1 MiB. Best effort: a narrow pipe only costs
/// speed (and an unprivileged user's pipes are capped by
/// /proc/sys/fs/pipe-max-size).
pub fn widen(fd: i32) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(WIDTH));
}
