//! Users and groups of an image: its `/etc/passwd` and `/etc/group`, read once, and docker's user
//! specs resolved against them with the rules each has in docker and BuildKit:
//!
//! - [`Users::identity`]: `USER` for RUN and `wharf run` (`name`, `uid`, `name:group`,
//!   `uid:gid`): a numeric uid found in passwd takes its primary group there, else group 0; an
//!   empty user is root, and root needs no passwd file; the supplementary groups are the
//!   primary one, then every group that lists the user (containerd and BuildKit since the fix
//!   for CVE-2023-25173).
//! - [`Users::owner`]: `COPY --chown`/`ADD --chown`: a numeric uid without a group owns as
//!   `uid:uid`, as BuildKit gives it; names are looked up.

use std::path::Path;

/// Who a command runs as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (the primary one first, then those listing the user as a member).
    pub groups: Vec<u32>,
}

/// Who owns a copied file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl Owner {
    /// root:root.
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };
}

/// One line of passwd or group: its `:`-separated fields.
struct Entry(Vec<String>);

impl Entry {
    fn name(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    fn id(&self) -> Option<u32> {
        self.0.get(2)?.parse().ok()
    }

    /// passwd's primary group; group's member list.
    fn fourth(&self) -> &str {
        self.0.get(3).map_or("", String::as_str)
    }
}

/// An image's users and groups.
pub struct Users {
    passwd: Vec<Entry>,
    groups: Vec<Entry>,
}

fn entries(db: &str) -> Vec<Entry> {
    db.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| Entry(l.split(':').map(str::to_owned).collect()))
        .collect()
}

/// A user spec names what the image does not have (docker's words).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// No such user in `/etc/passwd`.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// No such group in `/etc/group`.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
}

fn unknown_user(user: &str) -> UserError {
    UserError::UnknownUser(user.to_owned())
}

fn unknown_group(group: &str) -> UserError {
    UserError::UnknownGroup(group.to_owned())
}

impl Users {
    /// From the two files' contents (empty when a file is missing).
    pub fn parse(passwd: &str, group: &str) -> Users {
        Users {
            passwd: entries(passwd),
            groups: entries(group),
        }
    }

    /// From the files in the root directory `root`, read without leaving it.
    pub fn read(root: &Path) -> Users {
        Users::parse(
            &crate::context::read_in_root(root, "etc/passwd"),
            &crate::context::read_in_root(root, "etc/group"),
        )
    }

    fn group_id(&self, group: &str) -> Result<u32, UserError> {
        match self.groups.iter().find(|g| g.name() == group) {
            Some(g) => Ok(g.id().unwrap_or(0)),
            None => group.parse().map_err(|_| unknown_group(group)),
        }
    }

    /// A `USER` spec, as RUN and `wharf run` run it.
    pub fn identity(&self, spec: &str) -> Result<Identity, UserError> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let user = if user.is_empty() { "root" } else { user };
        let numeric = user.parse::<u32>().ok();
        let found = self.passwd.iter().find(|e| {
            e.name() == user || (numeric.is_some() && e.0.get(2).map(String::as_str) == Some(user))
        });
        let (uid, mut gid, name) = match (numeric, found) {
            (_, Some(e)) => (
                e.id().unwrap_or(0),
                e.fourth().parse().unwrap_or(0),
                Some(e.name()),
            ),
            (Some(n), None) => (n, 0, None),
            // An image without /etc/passwd still runs as root.
            (None, None) if user == "root" => (0, 0, None),
            (None, None) => return Err(unknown_user(user)),
        };
        if let Some(g) = group {
            gid = self.group_id(g)?;
        }
        let mut groups = vec![gid];
        if group.is_none()
            && let Some(name) = name
        {
            for g in &self.groups {
                if g.fourth().split(',').any(|m| m == name)
                    && let Some(id) = g.id()
                    && !groups.contains(&id)
                {
                    groups.push(id);
                }
            }
        }
        Ok(Identity { uid, gid, groups })
    }

    /// A `--chown` spec, as COPY and ADD own files with it.
    pub fn owner(&self, spec: &str) -> Result<Owner, UserError> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let (uid, primary) = match user.parse::<u32>() {
            Ok(n) => (n, None),
            Err(_) => {
                let e = self
                    .passwd
                    .iter()
                    .find(|e| e.name() == user)
                    .ok_or_else(|| unknown_user(user))?;
                (e.id().unwrap_or(0), e.fourth().parse().ok())
            }
        };
        let gid = match group {
            Some(g) => self.group_id(g)?,
            None => primary.unwrap_or(uid),
        };
        Ok(Owner { uid, gid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "# users\nroot:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\nu:x:1002:1002::/home/u:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:u\napp:x:1001:\nu:x:1002:\n";

    #[test]
    fn run_users_get_their_groups() {
        let db = Users::parse(PASSWD, GROUP);
        assert_eq!(
            db.identity("u").unwrap(),
            Identity {
                uid: 1002,
                gid: 1002,
                groups: vec![1002, 50]
            }
        );
        assert_eq!(db.identity("1000").unwrap().gid, 1001);
        assert_eq!(
            db.identity("4242").unwrap(),
            Identity {
                uid: 4242,
                gid: 0,
                groups: vec![0]
            }
        );
        let explicit = db.identity("5:7").unwrap();
        assert_eq!(
            (explicit.uid, explicit.gid, explicit.groups),
            (5, 7, vec![7])
        );
        assert_eq!(db.identity("app:staff").unwrap().gid, 50);
        assert_eq!(
            db.identity("").unwrap(),
            Identity {
                uid: 0,
                gid: 0,
                groups: vec![0]
            }
        );
        assert_eq!(Users::parse("", "").identity("root").unwrap().uid, 0);
        assert_eq!(
            db.identity("nobody").unwrap_err().to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert_eq!(
            db.identity("u:nogroup").unwrap_err(),
            UserError::UnknownGroup("nogroup".into())
        );
    }

    #[test]
    fn chown_owners() {
        let db = Users::parse(PASSWD, GROUP);
        assert_eq!(
            db.owner("app").unwrap(),
            Owner {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(db.owner("app:staff").unwrap(), Owner { uid: 1000, gid: 50 });
        assert_eq!(db.owner("42").unwrap(), Owner { uid: 42, gid: 42 });
        assert_eq!(db.owner("42:7").unwrap(), Owner { uid: 42, gid: 7 });
        assert_eq!(
            db.owner("nobody").unwrap_err(),
            UserError::UnknownUser("nobody".into())
        );
    }
}
