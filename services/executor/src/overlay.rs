//! The container's root: an overlay of the image's snapshots (read-only lowerdirs) and
//! the container's own `upper`/`work`. Mount options are limited to one page, so a deep
//! image is mounted with lowerdirs relative to the snapshots dir, from a helper process
//! that can chdir there (the executor is multi-threaded: its cwd is not its own to change).

use std::path::{Path, PathBuf};

/// The kernel copies at most one page of mount data; keep a margin below it.
pub const MAX_OPTIONS: usize = 4000;

/// How to mount one overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// Directory to chdir into first (relative lowerdirs), if any.
    pub cwd: Option<PathBuf>,
    pub data: String,
}

fn check_path(path: &str) -> Result<(), String> {
    // `,` separates options and `:` lowerdirs; berth's own paths never contain them.
    if path.contains([',', ':']) || path.is_empty() {
        return Err(format!(
            "path {path:?} cannot be used in overlay mount options"
        ));
    }
    Ok(())
}

/// Options for `lowerdirs` (top first), `upper` and `work`: absolute if they fit in a
/// page, else lowerdirs relative to their common parent.
pub fn plan(lowerdirs: &[String], upper: &Path, work: &Path) -> Result<MountPlan, String> {
    if lowerdirs.is_empty() {
        return Err("the image has no layers".into());
    }
    let upper = upper.display().to_string();
    let work = work.display().to_string();
    for path in lowerdirs.iter().chain([&upper, &work]) {
        check_path(path)?;
    }
    let absolute = format!(
        "lowerdir={},upperdir={upper},workdir={work}",
        lowerdirs.join(":")
    );
    if absolute.len() <= MAX_OPTIONS {
        return Ok(MountPlan {
            cwd: None,
            data: absolute,
        });
    }
    // Snapshots are `<snapshots>/<n>/fs`: relative to `<snapshots>` they are `<n>/fs`.
    let parent = common_grandparent(lowerdirs)
        .ok_or("lowerdirs do not share a snapshots directory; too many to mount")?;
    let relative: Vec<String> = lowerdirs
        .iter()
        .filter_map(|l| Path::new(l).strip_prefix(&parent).ok())
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={upper},workdir={work}",
        relative.join(":")
    );
    if data.len() > MAX_OPTIONS {
        return Err(format!(
            "{} layers do not fit in one page of overlay mount options even as relative paths",
            lowerdirs.len()
        ));
    }
    Ok(MountPlan {
        cwd: Some(parent),
        data,
    })
}

fn common_grandparent(lowerdirs: &[String]) -> Option<PathBuf> {
    let first = Path::new(lowerdirs.first()?)
        .parent()?
        .parent()?
        .to_path_buf();
    lowerdirs
        .iter()
        .all(|l| Path::new(l).starts_with(&first))
        .then_some(first)
}

/// mount(2) of an overlay in this process (only when `plan.cwd` is `None`, or from the
/// single-threaded helper after it chdir'd).
pub fn mount_here(data: &str, target: &Path) -> Result<(), String> {
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data),
    )
    .map_err(|err| format!("mount overlay on {}: {err}", target.display()))
}

/// Mounts the overlay, through `helper mount-overlay <cwd> <target> <data>` when it
/// needs relative lowerdirs.
pub fn mount(plan: &MountPlan, target: &Path, helper: &Path) -> Result<(), String> {
    let Some(cwd) = &plan.cwd else {
        return mount_here(&plan.data, target);
    };
    let output = std::process::Command::new(helper)
        .arg("mount-overlay")
        .arg(cwd)
        .arg(target)
        .arg(&plan.data)
        .output()
        .map_err(|err| format!("run {}: {err}", helper.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// Lazily unmounts `target`; not mounted is fine.
pub fn unmount(target: &Path) -> Result<(), String> {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(err) => Err(format!("unmount {}: {err}", target.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_lists_are_absolute() {
        let lower = vec![
            "/d/snapshots/2/fs".to_string(),
            "/d/snapshots/1/fs".to_string(),
        ];
        let plan = plan(&lower, Path::new("/d/c/x/upper"), Path::new("/d/c/x/work")).expect("plan");
        assert_eq!(plan.cwd, None);
        assert_eq!(
            plan.data,
            "lowerdir=/d/snapshots/2/fs:/d/snapshots/1/fs,upperdir=/d/c/x/upper,workdir=/d/c/x/work"
        );
    }

    #[test]
    fn deep_images_use_relative_lowerdirs() {
        let base = format!(
            "/var/lib/berth/{}/snapshots",
            "very-long-directory-name".repeat(3)
        );
        let lower: Vec<String> = (0..120).rev().map(|n| format!("{base}/{n}/fs")).collect();
        let plan = plan(&lower, Path::new("/u"), Path::new("/w")).expect("plan");
        assert_eq!(plan.cwd.as_deref(), Some(Path::new(&base)));
        assert!(
            plan.data.starts_with("lowerdir=119/fs:118/fs:"),
            "{}",
            plan.data
        );
        assert!(plan.data.len() <= MAX_OPTIONS);
        let too_many: Vec<String> = (0..2000).map(|n| format!("{base}/{n}/fs")).collect();
        assert!(super::plan(&too_many, Path::new("/u"), Path::new("/w")).is_err());
    }

    #[test]
    fn separators_in_paths_are_refused() {
        let lower = vec!["/a,b/fs".to_string()];
        assert!(plan(&lower, Path::new("/u"), Path::new("/w")).is_err());
        assert!(plan(&[], Path::new("/u"), Path::new("/w")).is_err());
    }
}
