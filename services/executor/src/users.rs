//! `--user` resolution against the image's `/etc/passwd` and `/etc/group`, as Docker
//! (runc's libcontainer/user) does it.

/// Who the container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Home directory from passwd, for `HOME`.
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> Vec<PasswdEntry<'_>> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?,
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).copied().unwrap_or("/"),
            })
        })
        .collect()
}

fn group_entries(text: &str) -> Vec<GroupEntry<'_>> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: f.first()?,
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `user[:group]` (names or numbers; empty means root). `passwd` and `group`
/// are the files' contents, `None` when the image has none.
pub fn resolve(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<ExecUser, String> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let users = passwd.map(passwd_entries).unwrap_or_default();
    let groups = group.map(group_entries).unwrap_or_default();

    let numeric_uid = user_part.parse::<u32>().ok();
    let entry = match numeric_uid {
        Some(uid) => users.iter().find(|u| u.uid == uid),
        None => users.iter().find(|u| u.name == user_part),
    };
    let (uid, mut gid, name, home) = match (numeric_uid, entry) {
        (_, Some(e)) => (e.uid, e.gid, Some(e.name), e.home.to_string()),
        (Some(uid), None) => (uid, 0, None, "/".to_string()),
        (None, None) => {
            return Err(format!(
                "unable to find user {user_part}: no matching entries in passwd file"
            ))
        }
    };
    let mut additional_gids = Vec::new();
    match group_part {
        Some(g) if !g.is_empty() => {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => groups
                    .iter()
                    .find(|e| e.name == g)
                    .map(|e| e.gid)
                    .ok_or_else(|| {
                        format!("unable to find group {g}: no matching entries in group file")
                    })?,
            };
        }
        _ => {
            // Without an explicit group, the user's supplementary groups apply.
            if let Some(name) = name {
                additional_gids = groups
                    .iter()
                    .filter(|e| e.members.contains(&name) && e.gid != gid)
                    .map(|e| e.gid)
                    .collect();
            }
        }
    }
    Ok(ExecUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        # a comment\n\
        www:x:33:33:www:/var/www:/bin/false\n\
        broken line\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nstaff:x:50:www,daemon\naudio:x:29:www\n";

    #[test]
    fn names_and_numbers_resolve_like_docker() {
        let root = resolve("", Some(PASSWD), Some(GROUP)).expect("root");
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let www = resolve("www", Some(PASSWD), Some(GROUP)).expect("www");
        assert_eq!((www.uid, www.gid), (33, 33));
        assert_eq!(www.additional_gids, vec![50, 29]);
        assert_eq!(www.home, "/var/www");
        let by_number = resolve("33", Some(PASSWD), Some(GROUP)).expect("33");
        assert_eq!((by_number.uid, by_number.gid), (33, 33));
        let unknown_number = resolve("1234", Some(PASSWD), Some(GROUP)).expect("1234");
        assert_eq!((unknown_number.uid, unknown_number.gid), (1234, 0));
        let with_group = resolve("daemon:staff", Some(PASSWD), Some(GROUP)).expect("group");
        assert_eq!((with_group.uid, with_group.gid), (1, 50));
        assert!(with_group.additional_gids.is_empty());
        let numeric_pair = resolve("1000:1000", None, None).expect("numbers");
        assert_eq!((numeric_pair.uid, numeric_pair.gid), (1000, 1000));
    }

    #[test]
    fn unknown_names_are_errors() {
        let err = resolve("nobody", Some(PASSWD), Some(GROUP)).expect_err("unknown user");
        assert!(err.contains("unable to find user nobody"), "{err}");
        let err = resolve("www:wheel", Some(PASSWD), Some(GROUP)).expect_err("unknown group");
        assert!(err.contains("unable to find group wheel"), "{err}");
        assert!(resolve("www", None, None).is_err());
    }
}
