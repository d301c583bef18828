//! Who may change what through the control socket. Connecting is governed by the socket file
//! (mode 0660, the configured group); on top of that, every request that changes the bench
//! (`job_add`, `job_cancel`, `job_retry`) is authorized from the peer's kernel credentials
//! (SO_PEERCRED, taken at connect time, not forgeable by the client): root, the agent's own
//! user, or a member of the configured group. Read-only requests (`status`, `job_list`,
//! `job_show`, `subscribe`) stay open to anyone who can connect.
//!
//! Membership is the peer's primary gid or the supplementary groups the user database gives
//! its uid (`getgrouplist`, i.e. `/etc/group` and NSS), looked up at each request, so adding a
//! technician to the group takes effect without a restart.

use nix::unistd::{Gid, Group, Uid, User};

/// A connected peer's credentials, as the kernel reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl From<tokio::net::unix::UCred> for Peer {
    fn from(c: tokio::net::unix::UCred) -> Peer {
        Peer {
            uid: c.uid(),
            gid: c.gid(),
        }
    }
}

/// Why a peer may change the bench.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// uid 0.
    Root,
    /// The uid the agent runs as.
    AgentUser,
    /// A member of the configured group.
    Group,
}

/// Decides whether `peer` may run a mutating request, given the configured group's name.
/// The error is the sentence the client is told.
pub fn may_change(peer: Option<Peer>, group: &str) -> Result<Grant, String> {
    let Some(peer) = peer else {
        return Err("the agent could not read this connection's credentials".into());
    };
    if peer.uid == 0 {
        return Ok(Grant::Root);
    }
    if Uid::from_raw(peer.uid) == Uid::effective() {
        return Ok(Grant::AgentUser);
    }
    let who = match User::from_uid(Uid::from_raw(peer.uid)) {
        Ok(Some(u)) => format!("uid {} ({})", peer.uid, u.name),
        _ => format!("uid {}", peer.uid),
    };
    let gid = match Group::from_name(group) {
        Ok(Some(g)) => g.gid,
        _ => {
            return Err(format!(
                "{who} may not change jobs: only root may, because the agent's group {group} \
                 does not exist on this system"
            ));
        }
    };
    if in_group(peer, gid) {
        return Ok(Grant::Group);
    }
    Err(format!(
        "{who} may not change jobs: only root and members of group {group} may (reading \
         status and jobs is open to anyone who can connect)"
    ))
}

/// Whether `peer` belongs to `gid`: the process's primary gid, or, for its uid's user, the
/// primary group in the password database and the supplementary groups (`getgrouplist`).
fn in_group(peer: Peer, gid: Gid) -> bool {
    if peer.gid == gid.as_raw() {
        return true;
    }
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(peer.uid)) else {
        return false;
    };
    if user.gid == gid {
        return true;
    }
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, user.gid)
        .map(|groups| groups.contains(&gid))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_group_with_a_member() -> Option<(String, u32, u32, u32)> {
        // (group, its gid, a member's uid, that member's primary gid), from /etc/group.
        let text = std::fs::read_to_string("/etc/group").ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let member = f.get(3)?.split(',').find(|m| !m.is_empty())?;
            let u = User::from_name(member).ok()??;
            let gid: u32 = f.get(2)?.parse().ok()?;
            (u.gid.as_raw() != gid && u.uid.as_raw() != 0)
                .then(|| (f[0].to_string(), gid, u.uid.as_raw(), u.gid.as_raw()))
        })
    }

    #[test]
    fn root_and_the_agents_user_may() {
        let root = Peer { uid: 0, gid: 0 };
        assert_eq!(may_change(Some(root), "no-such-group-tek"), Ok(Grant::Root));
        let me = Peer {
            uid: Uid::effective().as_raw(),
            gid: Gid::effective().as_raw(),
        };
        assert!(may_change(Some(me), "no-such-group-tek").is_ok());
        assert!(may_change(None, "tek").is_err());
    }

    #[test]
    fn others_need_the_group() {
        let nobody = Peer {
            uid: 65534,
            gid: 65534,
        };
        let e = may_change(Some(nobody), "no-such-group-tek").unwrap_err();
        assert!(
            e.contains("uid 65534") && e.contains("does not exist"),
            "{e}"
        );
        // Primary gid membership.
        let g = Group::from_gid(Gid::from_raw(65534)).unwrap().unwrap();
        assert_eq!(may_change(Some(nobody), &g.name), Ok(Grant::Group));
        // Not a member of root's group.
        let e = may_change(Some(nobody), "root").unwrap_err();
        assert!(e.contains("members of group root"), "{e}");
    }

    #[test]
    fn supplementary_group_from_the_user_database() {
        let Some((group, _gid, uid, primary)) = first_group_with_a_member() else {
            tek_testkit::skip!("no such user here");
            return;
        };
        let peer = Peer { uid, gid: primary };
        assert_eq!(may_change(Some(peer), &group), Ok(Grant::Group));
    }
}
