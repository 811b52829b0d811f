//! Named and anonymous volumes of this node: `<data>/volumes/<name>/_data` holds the
//! data, `<data>/volumes/<name>/volume.json` what was asked at create. A volume appears
//! whole (made under a temp name, then renamed) and disappears whole (renamed away, then
//! deleted), so a crash never leaves a half volume under its name.

use crate::state::{self, write_atomic};
use berth_proto::messages::exec::VolumeInfo;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `volume.json`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub created: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub anonymous: bool,
}

const RECORD: &str = "volume.json";
const DATA: &str = "_data";

/// What can go wrong with a volume; each names it.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    Invalid(String),
    #[error("no such volume: {0}")]
    NotFound(String),
    #[error("volume {name} is in use by container {container}")]
    InUse { name: String, container: String },
    #[error("volume {name}: {path}: {source}")]
    Io {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Docker's rule for volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn check_volume_name(name: &str) -> Result<(), VolumeError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || name.len() < 2
        || name.len() > 128
        || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(VolumeError::Invalid(format!(
            "invalid volume name {name:?}: two or more of [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )));
    }
    Ok(())
}

/// The volumes directory of a node and the bookkeeping that keeps `remove` from taking
/// a volume a container is being created with.
pub struct Volumes {
    dir: PathBuf,
    /// Volumes named by creates in flight (their records are not written yet).
    pending: Mutex<HashMap<String, usize>>,
}

impl Volumes {
    /// Volumes under `dir` (created if missing).
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Volumes {
            dir,
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// Host path of a volume's data.
    pub fn data_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join(DATA)
    }

    fn io(name: &str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
        let (name, path) = (name.to_string(), path.to_path_buf());
        move |source| VolumeError::Io { name, path, source }
    }

    /// Reads one volume's record.
    pub fn get(&self, name: &str) -> Result<VolumeRecord, VolumeError> {
        check_volume_name(name)?;
        let path = self.dir.join(name).join(RECORD);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(name.to_string()))
            }
            Err(err) => return Err(Self::io(name, &path)(err)),
        };
        serde_json::from_slice(&bytes).map_err(|err| VolumeError::Io {
            name: name.to_string(),
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, err),
        })
    }

    /// Creates a volume, or returns the existing one of that name (Docker's behaviour).
    pub fn create(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<VolumeRecord, VolumeError> {
        check_volume_name(name)?;
        match self.get(name) {
            Ok(existing) => return Ok(existing),
            Err(VolumeError::NotFound(_)) => {}
            Err(err) => return Err(err),
        }
        let tmp = self.dir.join(format!(".tmp-{name}-{}", std::process::id()));
        let _ = berth_fstree::remove_tree(&tmp);
        let data = tmp.join(DATA);
        std::fs::create_dir_all(&data).map_err(Self::io(name, &data))?;
        let record = VolumeRecord {
            name: name.to_string(),
            created: state::now_rfc3339(),
            labels,
            anonymous,
        };
        let bytes = serde_json::to_vec_pretty(&record).map_err(|err| VolumeError::Io {
            name: name.to_string(),
            path: tmp.join(RECORD),
            source: std::io::Error::other(err),
        })?;
        write_atomic(&tmp.join(RECORD), &bytes).map_err(|err| VolumeError::Io {
            name: name.to_string(),
            path: tmp.join(RECORD),
            source: std::io::Error::other(err.to_string()),
        })?;
        let target = self.dir.join(name);
        match std::fs::rename(&tmp, &target) {
            Ok(()) => Ok(record),
            // Lost a race with another create of the same name: theirs stands.
            Err(_) if target.join(RECORD).is_file() => {
                let _ = berth_fstree::remove_tree(&tmp);
                self.get(name)
            }
            Err(err) => {
                let _ = berth_fstree::remove_tree(&tmp);
                Err(Self::io(name, &target)(err))
            }
        }
    }

    /// Every volume's record, sorted by name.
    pub fn list(&self) -> Vec<VolumeRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<VolumeRecord> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| self.get(&n).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Marks volumes as about to be used by a create; [`Volumes::release`] undoes it.
    pub fn reserve(&self, names: &[String]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for name in names {
            *pending.entry(name.clone()).or_default() += 1;
        }
    }

    /// Ends a reservation made by [`Volumes::reserve`].
    pub fn release(&self, names: &[String]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for name in names {
            if let Some(n) = pending.get_mut(name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    pending.remove(name);
                }
            }
        }
    }

    /// Removes a volume unless a container uses it. `users` lists the containers (by
    /// id) whose records name it; it is called under the lock creates reserve with, so a
    /// create cannot slip in between the check and the removal.
    pub fn remove(
        &self,
        name: &str,
        users: impl FnOnce() -> Vec<String>,
        force: bool,
    ) -> Result<(), VolumeError> {
        check_volume_name(name)?;
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(container) = users().first() {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                container: container.clone(),
            });
        }
        if pending.contains_key(name) {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                container: "(being created)".to_string(),
            });
        }
        let target = self.dir.join(name);
        if !target.join(RECORD).is_file() {
            return if force {
                Ok(())
            } else {
                Err(VolumeError::NotFound(name.to_string()))
            };
        }
        let trash = self
            .dir
            .join(format!(".trash-{name}-{}", std::process::id()));
        std::fs::rename(&target, &trash).map_err(Self::io(name, &target))?;
        drop(pending);
        berth_fstree::remove_tree(&trash).map_err(Self::io(name, &trash))
    }

    /// Deletes leftovers of creates and removes a crash interrupted.
    pub fn clean_leftovers(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".tmp-") || name.starts_with(".trash-") {
                    let _ = berth_fstree::remove_tree(&entry.path());
                }
            }
        }
    }

    /// The wire form of a record.
    pub fn info(
        &self,
        record: &VolumeRecord,
        node_id: &str,
        containers: Vec<String>,
    ) -> VolumeInfo {
        VolumeInfo {
            name: record.name.clone(),
            node_id: node_id.to_string(),
            driver: "local".to_string(),
            mountpoint: self.data_path(&record.name).display().to_string(),
            created: record.created.clone(),
            labels: record.labels.clone(),
            anonymous: record.anonymous,
            containers,
        }
    }
}

/// Copies the image's content at a volume's mount point into a new, empty volume
/// (Docker's copy-up). Symlinks are copied as links, never followed; ownership and
/// modes are kept. The image controls the tree's depth, so the walk is iterative.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    berth_fstree::copy_tree(from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_created_once_listed_and_removed_unless_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let volumes = Volumes::new(dir.path().join("volumes")).expect("dir");
        let first = volumes
            .create("data", BTreeMap::from([("a".into(), "b".into())]), false)
            .expect("creates");
        std::fs::write(volumes.data_path("data").join("f"), "kept").expect("write");
        let again = volumes
            .create("data", BTreeMap::new(), false)
            .expect("idempotent");
        assert_eq!(again, first);
        assert_eq!(
            std::fs::read_to_string(volumes.data_path("data").join("f")).expect("read"),
            "kept"
        );
        assert!(matches!(
            volumes.create("x", BTreeMap::new(), false),
            Err(VolumeError::Invalid(_))
        ));
        assert!(matches!(
            volumes.create("../etc", BTreeMap::new(), false),
            Err(VolumeError::Invalid(_))
        ));
        assert_eq!(volumes.list().len(), 1);

        let err = volumes
            .remove("data", || vec!["c1".into()], false)
            .expect_err("in use");
        assert!(err.to_string().contains("in use by container c1"), "{err}");
        volumes.reserve(&["data".into()]);
        assert!(volumes.remove("data", Vec::new, false).is_err());
        volumes.release(&["data".into()]);
        volumes.remove("data", Vec::new, false).expect("removes");
        assert!(matches!(volumes.get("data"), Err(VolumeError::NotFound(_))));
        assert!(volumes.remove("data", Vec::new, false).is_err());
        volumes
            .remove("data", Vec::new, true)
            .expect("force: missing is fine");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("volumes"))
            .expect("lists")
            .collect();
        assert!(left.is_empty());
    }

    #[test]
    fn copy_up_keeps_links_modes_and_content() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let from = dir.path().join("from");
        std::fs::create_dir_all(from.join("sub")).expect("mkdir");
        std::fs::write(from.join("sub/file"), "x").expect("write");
        std::fs::set_permissions(
            from.join("sub/file"),
            std::fs::Permissions::from_mode(0o640),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("/etc/passwd", from.join("link")).expect("symlink");
        let to = dir.path().join("to");
        std::fs::create_dir(&to).expect("mkdir");
        copy_tree(&from, &to).expect("copies");
        assert_eq!(
            std::fs::read_to_string(to.join("sub/file")).expect("read"),
            "x"
        );
        let mode = std::fs::metadata(to.join("sub/file"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(
            std::fs::read_link(to.join("link")).expect("link"),
            PathBuf::from("/etc/passwd")
        );
    }
}
