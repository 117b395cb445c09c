//! Extended attributes of open files and directories: read for a backup,
//! set again by a restore. POSIX ACLs (`system.posix_acl_access`,
//! `system.posix_acl_default`) and file capabilities (`security.capability`)
//! are extended attributes too, so they travel the same way.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::meta::{RawPath, Xattr};

/// Calls `fill` with a buffer until the buffer holds the whole answer: a
/// first call with no buffer asks for the size, and an answer that grew in
/// between (`ERANGE`) is asked for again.
fn sized(mut fill: impl FnMut(&mut [u8]) -> isize) -> std::io::Result<Vec<u8>> {
    loop {
        let wanted = fill(&mut []);
        if wanted < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buffer = vec![0u8; wanted as usize];
        let got = fill(&mut buffer);
        if got >= 0 {
            buffer.truncate(got as usize);
            return Ok(buffer);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(nix::libc::ERANGE) {
            return Err(err);
        }
    }
}

/// The extended attributes of an open file or directory, in the order the
/// file system lists them. A file system without them has none; an
/// attribute removed while being read is left out.
pub fn read(fd: BorrowedFd) -> std::io::Result<Vec<Xattr>> {
    let raw = fd.as_raw_fd();
    // SAFETY: the buffer pointer and length describe a writable buffer (or are null and zero).
    let names = match sized(|buf| unsafe { nix::libc::flistxattr(raw, buf.as_mut_ptr().cast(), buf.len()) }) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut attributes = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let c_name = CString::new(name).expect("split at NUL bytes");
        // SAFETY: as above; `c_name` is a valid C string.
        let value =
            sized(|buf| unsafe { nix::libc::fgetxattr(raw, c_name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) });
        match value {
            Ok(value) => attributes.push(Xattr { name: RawPath(name.to_vec()), value: hex::encode(value) }),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(attributes)
}

/// True for the namespaces only a privileged process may set (`trusted.*`,
/// `security.*`, file capabilities among them).
pub fn needs_privilege(attribute: &Xattr) -> bool {
    attribute.name.0.starts_with(b"trusted.") || attribute.name.0.starts_with(b"security.")
}

/// Why an attribute could not be set.
pub enum SetError {
    /// The stream's value is not hex or the name holds a NUL byte: the stream is damaged.
    Malformed,
    /// The file system or the kernel refused it.
    Refused(std::io::Error),
}

/// Sets one attribute on an open file or directory, replacing any value it had.
pub fn set(fd: BorrowedFd, attribute: &Xattr) -> Result<(), SetError> {
    let value = hex::decode(&attribute.value).map_err(|_| SetError::Malformed)?;
    let name = CString::new(attribute.name.0.clone()).map_err(|_| SetError::Malformed)?;
    // SAFETY: `name` is a valid C string and `value` a readable buffer of its length.
    let rc = unsafe { nix::libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc != 0 {
        return Err(SetError::Refused(std::io::Error::last_os_error()));
    }
    Ok(())
}
