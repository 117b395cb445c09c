//! Path policy for unpacking: which stream paths are acceptable, and how they
//! split into parents and top-level names.

use crate::error::{Error, Result};

/// Prefix of the staging directories `unpack` makes inside its target.
pub const STAGING_PREFIX: &str = ".backpipe-unpack-";

/// A stream path for messages.
pub fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Checks a stream path is relative and plain: no empty, `.` or `..`
/// components, no NUL, and not a name unpack reserves for its staging.
pub fn check(name: &[u8]) -> Result<()> {
    let refuse = |why: &str| Err(Error::other(format!("refusing entry '{}': {why}", lossy(name))));
    if name.is_empty() {
        return refuse("empty path");
    }
    if name.starts_with(b"/") {
        return refuse("absolute path");
    }
    if name.contains(&0) {
        return refuse("NUL byte in path");
    }
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => return refuse("empty or '.' path component"),
            b".." => return refuse("'..' path component"),
            _ => {}
        }
    }
    if top(name).starts_with(STAGING_PREFIX.as_bytes()) {
        return refuse("the name is reserved for unpack's staging directories");
    }
    Ok(())
}

/// The first component of a path.
pub fn top(name: &[u8]) -> &[u8] {
    name.split(|&b| b == b'/').next().unwrap_or(name)
}

/// Everything before the last `/`, or `None` for a top-level name.
pub fn parent(name: &[u8]) -> Option<&[u8]> {
    name.iter().rposition(|&b| b == b'/').map(|cut| &name[..cut])
}

/// True when `name` lies inside directory `dir`.
pub fn is_inside(name: &[u8], dir: &[u8]) -> bool {
    name.len() > dir.len() && name.starts_with(dir) && name[dir.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"../x",
            b"a/../../x",
            b"a//b",
            b"./a",
            b"a/.",
            b"a\0b",
            b".backpipe-unpack-1-0/x",
        ] {
            assert!(check(bad).is_err(), "{:?}", lossy(bad));
        }
        for good in [&b"a"[..], b"a/b/c", b"..a", b"a..", b".hidden/x", b"x/.backpipe-unpack-1"] {
            assert!(check(good).is_ok(), "{:?}", lossy(good));
        }
    }

    #[test]
    fn parents_and_tops() {
        assert_eq!(top(b"a/b/c"), b"a");
        assert_eq!(parent(b"a/b/c"), Some(&b"a/b"[..]));
        assert_eq!(parent(b"a"), None);
        assert!(is_inside(b"a/b", b"a") && !is_inside(b"ab", b"a") && !is_inside(b"a", b"a"));
    }
}
