//! Implicit directories in overlay form.
//!
//! A layer tar often carries `a/b/file` without an `a/b/` entry of its own
//! (umoci and others only write what changed). Unpacked alone, the layer gets
//! `a/b` made as a 0755 root-owned directory; but in the merged overlay view the
//! topmost layer's directory supplies owner, mode and xattrs, so that default
//! would hide the real metadata from the layers below. Applying layers in order
//! (containerd, umoci, our applier) never has the problem because `a/b` already
//! exists. So after a layer is unpacked (in parallel, without its lowers), its
//! implicit directories copy the metadata of the same directory as the lower
//! layers show it — deterministic, because a chainID fixes its lower layers.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::safe_path::{self as sp, normalize, Root};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Gives directory `rel` of layer `upper` the owner, mode, xattrs and mtime of
/// the directory the merged view of `lowers_top_first` shows at `rel`. Returns
/// false (and changes nothing) when no lower layer has that directory.
pub fn inherit_dir_meta(
    upper: &Path,
    lowers_top_first: &[PathBuf],
    rel: &Path,
    preserve_owner: bool,
) -> io::Result<bool> {
    let comps = if rel.as_os_str().is_empty() {
        Vec::new()
    } else {
        normalize(rel).map_err(|r| io::Error::new(io::ErrorKind::InvalidInput, r))?
    };
    let Some(src) = find_in_lowers(lowers_top_first, &comps)? else {
        return Ok(false);
    };
    let dst = Root::open(upper)?
        .dir_uncached(&comps, false)
        .map_err(walk_io)?;
    let st = sp::fstat(src.as_fd())?;
    if preserve_owner {
        sp::fchown(dst.as_fd(), st.st_uid, st.st_gid)?;
    }
    sp::fchmod(dst.as_fd(), st.st_mode & 0o7777)?;
    for name in sp::flistxattr(src.as_fd())? {
        // The upper layer's own overlay markers (opaque) stay its own.
        if name.as_encoded_bytes().starts_with(b"trusted.overlay.") {
            continue;
        }
        let v = sp::fgetxattr(src.as_fd(), &name)?;
        sp::fsetxattr(dst.as_fd(), &name, &v)?;
    }
    sp::futimens(dst.as_fd(), sp::timespec(st.st_mtime, st.st_mtime_nsec))?;
    Ok(true)
}

/// The directory overlayfs would show at `comps` from these layers: the first
/// layer (top down) that has it as a directory, unless a whiteout, a
/// non-directory or an opaque ancestor hides the layers below first.
fn find_in_lowers(
    lowers_top_first: &[PathBuf],
    comps: &[std::ffi::OsString],
) -> io::Result<Option<OwnedFd>> {
    'layers: for lower in lowers_top_first {
        let root = Root::open(lower)?;
        let mut cur = sp::openat(root.fd(), OsStr::new("."), DIR_FLAGS, 0)?;
        let mut hides_below = false;
        for c in comps {
            // An opaque ancestor in this layer hides the same path in lower layers.
            if sp::fgetxattr(cur.as_fd(), OsStr::new(OPAQUE_XATTR)).is_ok_and(|v| v == b"y") {
                hides_below = true;
            }
            match sp::lstatat(cur.as_fd(), c)? {
                None => {
                    if hides_below {
                        return Ok(None);
                    }
                    continue 'layers;
                }
                Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                    cur = sp::openat(cur.as_fd(), c, DIR_FLAGS, 0)?;
                }
                // A whiteout (0:0 char device) or any non-directory ends the lookup.
                Some(_) => return Ok(None),
            }
        }
        return Ok(Some(cur));
    }
    Ok(None)
}

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

fn walk_io(e: sp::WalkError) -> io::Error {
    match e {
        sp::WalkError::Symlink(_) => io::Error::other("implicit dir path has a symlink"),
        sp::WalkError::NotADirectory(_) => {
            io::Error::other("implicit dir path has a non-directory")
        }
        sp::WalkError::Io(_, e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn inherits_from_the_nearest_lower_that_has_it() {
        let t = tempfile::tempdir().expect("tempdir");
        let (l0, l1, up) = (
            t.path().join("l0"),
            t.path().join("l1"),
            t.path().join("up"),
        );
        for d in [l0.join("a/b"), l1.join("a"), up.join("a/b")] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::set_permissions(l0.join("a/b"), std::fs::Permissions::from_mode(0o710))
            .expect("chmod");
        std::fs::set_permissions(l1.join("a"), std::fs::Permissions::from_mode(0o701))
            .expect("chmod");
        let lowers = [l1.clone(), l0.clone()];
        assert!(inherit_dir_meta(&up, &lowers, Path::new("a/b"), false).expect("b"));
        assert!(inherit_dir_meta(&up, &lowers, Path::new("a"), false).expect("a"));
        let mode = |p: &Path| std::fs::metadata(p).expect("md").mode() & 0o7777;
        assert_eq!(
            mode(&up.join("a/b")),
            0o710,
            "from l0 through l1's plain a/"
        );
        assert_eq!(mode(&up.join("a")), 0o701, "from l1, the nearest");
        assert!(!inherit_dir_meta(&up, &lowers, Path::new("zz"), false).expect("none"));
    }

    #[test]
    fn a_non_directory_in_between_hides_the_rest() {
        let t = tempfile::tempdir().expect("tempdir");
        let (l0, l1, up) = (
            t.path().join("l0"),
            t.path().join("l1"),
            t.path().join("up"),
        );
        for d in [l0.join("a/b"), l1.clone(), up.join("a/b")] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(l1.join("a"), b"file now").expect("file");
        std::fs::set_permissions(l0.join("a/b"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let lowers = [l1, l0];
        assert!(!inherit_dir_meta(&up, &lowers, Path::new("a/b"), false).expect("hidden"));
    }
}
