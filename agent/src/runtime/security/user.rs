//! Who the container process runs as: `user = "NAME|UID[:GROUP|GID]"` resolved against the
//! image's own /etc/passwd and /etc/group, the way Docker (runc's `GetExecUser`) does.
//!
//! Parsing and resolution are pure functions over the files' text, so every rule is
//! unit-tested; the shim reads the files inside the container's root just before exec.

/// The ids the process gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Real, effective and saved user id.
    pub uid: u32,
    /// Real, effective and saved group id.
    pub gid: u32,
    /// Supplementary groups (from /etc/group membership), without duplicates.
    pub groups: Vec<u32>,
}

impl Credentials {
    /// uid 0, gid 0, no supplementary groups.
    pub const ROOT: Credentials = Credentials {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
    };
}

/// Why a user spec cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// The spec is malformed.
    #[error("user {spec:?} is malformed; write \"NAME\", \"UID\", \"NAME:GROUP\" or \"UID:GID\"")]
    Malformed {
        /// The spec.
        spec: String,
    },
    /// A user name is not in /etc/passwd.
    #[error("unable to find user {name:?}: no matching entry in the image's /etc/passwd{}", missing_note(*file_missing))]
    UnknownUser {
        /// The name.
        name: String,
        /// /etc/passwd does not exist at all.
        file_missing: bool,
    },
    /// A group name is not in /etc/group.
    #[error("unable to find group {name:?}: no matching entry in the image's /etc/group{}", missing_note(*file_missing))]
    UnknownGroup {
        /// The name.
        name: String,
        /// /etc/group does not exist at all.
        file_missing: bool,
    },
}

fn missing_note(file_missing: bool) -> &'static str {
    if file_missing {
        " (the image has no such file; use numeric ids like \"1000:1000\")"
    } else {
        ""
    }
}

/// One /etc/passwd line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// One /etc/group line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Member login names.
    pub members: Vec<String>,
}

/// Parse /etc/passwd (`name:password:uid:gid:gecos:home:shell`); malformed lines and comments
/// are skipped, as libc does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: fields[2].trim().parse().ok()?,
                gid: fields[3].trim().parse().ok()?,
            })
        })
        .collect()
}

/// Parse /etc/group (`name:password:gid:member,member`); malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 3 || fields[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: fields[0].to_string(),
                gid: fields[2].trim().parse().ok()?,
                members: fields
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Split and check a spec without resolving it (manifest validation uses this).
pub fn check_spec(spec: &str) -> Result<(&str, Option<&str>), UserError> {
    let malformed = || UserError::Malformed {
        spec: spec.to_string(),
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let bad = |s: &str| s.is_empty() || s.contains(':') || s.chars().any(char::is_whitespace);
    if bad(user) || group.is_some_and(bad) {
        return Err(malformed());
    }
    Ok((user, group))
}

/// Resolve `spec` (empty means root) against the image's /etc/passwd and /etc/group text
/// (`None` when the file does not exist).
///
/// Rules (runc's): a numeric user need not exist (its primary group is then its passwd gid
/// if listed, else 0); a name must exist. The group, when given, replaces the primary group; a
/// numeric group need not exist. Supplementary groups are the groups listing the user's name
/// as a member, and only when no group is given (runc: they "only make sense in the implicit
/// form").
pub fn resolve(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<Credentials, UserError> {
    if spec.is_empty() {
        return resolve_parts("0", None, passwd, group);
    }
    let (user, grp) = check_spec(spec)?;
    resolve_parts(user, grp, passwd, group)
}

fn resolve_parts(
    user: &str,
    grp: Option<&str>,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<Credentials, UserError> {
    let users = parse_passwd(passwd.unwrap_or(""));
    let groups = parse_group(group.unwrap_or(""));

    let entry =
        match user.parse::<u32>() {
            Ok(uid) => users.iter().find(|u| u.uid == uid),
            Err(_) => Some(users.iter().find(|u| u.name == user).ok_or_else(|| {
                UserError::UnknownUser {
                    name: user.to_string(),
                    file_missing: passwd.is_none(),
                }
            })?),
        };
    let uid = match user.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.map_or(0, |e| e.uid),
    };
    let mut gid = entry.map_or(0, |e| e.gid);
    if let Some(grp) = grp {
        gid = match grp.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|g| g.name == grp)
                .map(|g| g.gid)
                .ok_or_else(|| UserError::UnknownGroup {
                    name: grp.to_string(),
                    file_missing: group.is_none(),
                })?,
        };
    }
    let mut supplementary = Vec::new();
    if let Some(name) = entry.map(|e| e.name.as_str()).filter(|_| grp.is_none()) {
        for g in &groups {
            if g.members.iter().any(|m| m == name) && !supplementary.contains(&g.gid) {
                supplementary.push(g.gid);
            }
        }
    }
    Ok(Credentials {
        uid,
        gid,
        groups: supplementary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          # a comment\n\
                          daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                          broken line\n\
                          www:x:33:33::/var/www:/bin/false\n\
                          app:x:1000:1001:App:/home/app:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\n\
                         wheel:x:10:root,app\n\
                         app:x:1001:\n\
                         audio:x:29:app , www\n\
                         nogroup:x:65534:\n\
                         bad:x:notanumber:app\n";

    fn creds(uid: u32, gid: u32, groups: &[u32]) -> Credentials {
        Credentials {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn parses_passwd_and_group_skipping_bad_lines() {
        let users = parse_passwd(PASSWD);
        assert_eq!(users.len(), 5);
        assert_eq!(
            users[3],
            PasswdEntry {
                name: "app".into(),
                uid: 1000,
                gid: 1001
            }
        );
        let groups = parse_group(GROUP);
        assert_eq!(groups.len(), 5);
        assert_eq!(groups[3].members, ["app", "www"]);
        assert!(groups[0].members.is_empty());
    }

    #[test]
    fn names_resolve_with_primary_and_supplementary_groups() {
        let c = resolve("app", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(c, creds(1000, 1001, &[10, 29]));
        let c = resolve("nobody:nogroup", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(c, creds(65534, 65534, &[]));
        let c = resolve("www:wheel", Some(PASSWD), Some(GROUP)).unwrap();
        // An explicit group replaces the primary group and the memberships.
        assert_eq!(c, creds(33, 10, &[]));
    }

    #[test]
    fn numeric_ids_need_no_entries() {
        assert_eq!(
            resolve("1000:1000", None, None).unwrap(),
            creds(1000, 1000, &[])
        );
        assert_eq!(
            resolve("4242", Some(PASSWD), Some(GROUP)).unwrap(),
            creds(4242, 0, &[])
        );
        // A listed uid takes its passwd gid and memberships.
        assert_eq!(
            resolve("1000", Some(PASSWD), Some(GROUP)).unwrap(),
            creds(1000, 1001, &[10, 29])
        );
        assert_eq!(
            resolve("33:5", Some(PASSWD), Some(GROUP)).unwrap(),
            creds(33, 5, &[])
        );
    }

    #[test]
    fn empty_spec_is_root_with_its_groups() {
        assert_eq!(
            resolve("", Some(PASSWD), Some(GROUP)).unwrap(),
            creds(0, 0, &[10])
        );
        assert_eq!(resolve("", None, None).unwrap(), Credentials::ROOT);
    }

    #[test]
    fn unknown_names_are_errors_that_say_where_they_looked() {
        let err = resolve("bob", Some(PASSWD), Some(GROUP)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unable to find user \"bob\": no matching entry in the image's /etc/passwd"
        );
        let err = resolve("app:staff", Some(PASSWD), Some(GROUP)).unwrap_err();
        assert!(
            err.to_string().contains("unable to find group \"staff\""),
            "{err}"
        );
        let err = resolve("nobody", None, None).unwrap_err();
        assert!(err.to_string().contains("use numeric ids"), "{err}");
    }

    #[test]
    fn malformed_specs_are_rejected() {
        for spec in [":", "app:", ":1", "a:b:c", "a b"] {
            assert!(
                matches!(check_spec(spec), Err(UserError::Malformed { .. })),
                "{spec}"
            );
        }
        assert_eq!(check_spec("app:wheel").unwrap(), ("app", Some("wheel")));
        assert_eq!(check_spec("1000").unwrap(), ("1000", None));
    }
}
