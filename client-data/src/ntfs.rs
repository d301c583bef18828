//! What a restore onto NTFS needs beyond POSIX: NTFS times, DOS attributes and the security
//! descriptor a restored file gets.
//!
//! *Security descriptors.* Windows gives a copied file a new descriptor inherited from the
//! folder it lands in (the copy's own ACL is not carried). A restore does the same, whatever the
//! mount options: every restored file and directory gets [`inherit`] of its parent's
//! descriptor, written through `system.ntfs_acl` (ntfs-3g) or `system.ntfs_security` (the
//! kernel's ntfs3). Without that, ntfs-3g (without its `permissions`/`inherit` options) would
//! give every file one fixed descriptor (Everyone: full control), and POSIX modes and owners
//! mean nothing on NTFS anyway. Inheritance follows the Windows rules for a self-relative
//! descriptor: object-inherit ACEs pass to files; container-inherit ACEs pass to directories,
//! keeping their inheritance flags unless no-propagate; object-inherit-only ACEs pass to
//! directories as inherit-only; every passed ACE is marked inherited; CREATOR OWNER/GROUP are
//! replaced by the owner/group (a directory also keeps an inherit-only copy). Owner and group
//! are the folder's. A folder with no inheritable ACE passes its own ACEs on as explicit ones
//! (Windows would take the creating user's default DACL, which a bench has no user for).

use crate::manifest::Time;

/// 100 ns intervals between 1601-01-01 and 1970-01-01.
const EPOCH_DIFF: i128 = 116_444_736_000_000_000;

/// An NTFS time (100 ns units since 1601) as a Unix time.
pub fn from_ntfs_time(t: u64) -> Time {
    let d = i128::from(t) - EPOCH_DIFF;
    Time {
        sec: d.div_euclid(10_000_000) as i64,
        nsec: (d.rem_euclid(10_000_000) * 100) as u32,
    }
}

/// A Unix time as an NTFS time, truncated to 100 ns (clamped to the NTFS range).
pub fn to_ntfs_time(t: Time) -> u64 {
    let d = i128::from(t.sec) * 10_000_000 + i128::from(t.nsec / 100) + EPOCH_DIFF;
    d.clamp(0, i128::from(u64::MAX)) as u64
}

/// DOS attribute bits a restore sets and verifies: read-only, hidden, system, archive.
pub const ATTRIB_KEPT: u32 = 0x01 | 0x02 | 0x04 | 0x20;

const SE_DACL_PRESENT: u16 = 0x0004;
const SE_DACL_AUTO_INHERITED: u16 = 0x0400;
const SE_SELF_RELATIVE: u16 = 0x8000;
const OBJECT_INHERIT: u8 = 0x01;
const CONTAINER_INHERIT: u8 = 0x02;
const NO_PROPAGATE: u8 = 0x04;
const INHERIT_ONLY: u8 = 0x08;
const INHERITED: u8 = 0x10;
const CREATOR_OWNER: [u8; 12] = [1, 1, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0];
const CREATOR_GROUP: [u8; 12] = [1, 1, 0, 0, 0, 0, 0, 3, 1, 0, 0, 0];

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn sid_at(b: &[u8], o: usize) -> Option<&[u8]> {
    let n = usize::from(*b.get(o + 1)?);
    b.get(o..o + 8 + 4 * n)
}

/// A parsed self-relative descriptor: owner, group, DACL revision and ACEs (raw).
struct Parsed<'a> {
    owner: &'a [u8],
    group: &'a [u8],
    acl_revision: u8,
    aces: Vec<&'a [u8]>,
}

fn parse(sd: &[u8]) -> Result<Parsed<'_>, String> {
    let bad = |what: &str| format!("security descriptor of the target folder: {what}");
    if sd.len() < 20 || sd[0] != 1 {
        return Err(bad("not a self-relative descriptor, revision 1"));
    }
    let control = u16_at(sd, 2).unwrap_or(0);
    let owner = sid_at(sd, u32_at(sd, 4).unwrap_or(0) as usize).ok_or_else(|| bad("no owner"))?;
    let group = sid_at(sd, u32_at(sd, 8).unwrap_or(0) as usize).ok_or_else(|| bad("no group"))?;
    let dacl = u32_at(sd, 16).unwrap_or(0) as usize;
    if control & SE_DACL_PRESENT == 0 || dacl == 0 {
        return Err(bad("no DACL (a NULL DACL grants everyone everything)"));
    }
    let size = usize::from(u16_at(sd, dacl + 2).ok_or_else(|| bad("DACL truncated"))?);
    let count = usize::from(u16_at(sd, dacl + 4).ok_or_else(|| bad("DACL truncated"))?);
    let acl = sd
        .get(dacl..dacl + size)
        .ok_or_else(|| bad("DACL truncated"))?;
    let mut aces = Vec::with_capacity(count);
    let mut o = 8;
    for _ in 0..count {
        let len = usize::from(u16_at(acl, o + 2).ok_or_else(|| bad("ACE truncated"))?);
        if len < 8 {
            return Err(bad("ACE shorter than its header"));
        }
        aces.push(acl.get(o..o + len).ok_or_else(|| bad("ACE truncated"))?);
        o += len;
    }
    Ok(Parsed {
        owner,
        group,
        acl_revision: acl[0],
        aces,
    })
}

/// An ACE with new flags, and its SID replaced when it is CREATOR OWNER/GROUP (only for the
/// plain allow/deny types, whose SID sits at offset 8).
fn ace_with(ace: &[u8], flags: u8, replace: Option<(&[u8], &[u8])>) -> Vec<u8> {
    let mut body = ace.to_vec();
    body[1] = flags;
    if let Some((owner, group)) = replace {
        if ace[0] <= 1 && ace.len() >= 8 {
            let sid = &ace[8..];
            let new = if sid == CREATOR_OWNER {
                Some(owner)
            } else if sid == CREATOR_GROUP {
                Some(group)
            } else {
                None
            };
            if let Some(new) = new {
                body.truncate(8);
                body.extend_from_slice(new);
                let len = body.len() as u16;
                body[2..4].copy_from_slice(&len.to_le_bytes());
            }
        }
    }
    body
}

/// The descriptor a new file (`dir == false`) or directory created in a folder with
/// descriptor `parent` gets (see the module doc).
pub fn inherit(parent: &[u8], dir: bool) -> Result<Vec<u8>, String> {
    let p = parse(parent)?;
    let creator = |a: &[u8]| a[0] <= 1 && (a[8..] == CREATOR_OWNER || a[8..] == CREATOR_GROUP);
    let mut aces: Vec<Vec<u8>> = Vec::new();
    for a in &p.aces {
        let f = a[1];
        let repl = Some((p.owner, p.group));
        if dir {
            if f & CONTAINER_INHERIT != 0 {
                if f & NO_PROPAGATE != 0 {
                    aces.push(ace_with(a, INHERITED, repl));
                } else if creator(a) {
                    aces.push(ace_with(a, INHERITED, repl));
                    aces.push(ace_with(a, (f & 3) | INHERIT_ONLY | INHERITED, None));
                } else {
                    aces.push(ace_with(a, (f & 3) | INHERITED, repl));
                }
            } else if f & OBJECT_INHERIT != 0 && f & NO_PROPAGATE == 0 {
                aces.push(ace_with(a, OBJECT_INHERIT | INHERIT_ONLY | INHERITED, None));
            }
        } else if f & OBJECT_INHERIT != 0 {
            aces.push(ace_with(a, INHERITED, repl));
        }
    }
    if aces.is_empty() {
        aces = p
            .aces
            .iter()
            .filter(|a| a[1] & INHERIT_ONLY == 0)
            .map(|a| ace_with(a, 0, None))
            .collect();
    }
    let mut acl = vec![p.acl_revision, 0, 0, 0];
    acl.extend_from_slice(&(aces.len() as u16).to_le_bytes());
    acl.extend_from_slice(&[0, 0]);
    for a in &aces {
        acl.extend_from_slice(a);
    }
    let acl_len = acl.len() as u16;
    acl[2..4].copy_from_slice(&acl_len.to_le_bytes());
    let owner_off = 20u32;
    let group_off = owner_off + p.owner.len() as u32;
    let dacl_off = group_off + p.group.len() as u32;
    let mut sd = vec![1u8, 0];
    let control = SE_SELF_RELATIVE | SE_DACL_PRESENT | SE_DACL_AUTO_INHERITED;
    sd.extend_from_slice(&control.to_le_bytes());
    for off in [owner_off, group_off, 0, dacl_off] {
        sd.extend_from_slice(&off.to_le_bytes());
    }
    sd.extend_from_slice(p.owner);
    sd.extend_from_slice(p.group);
    sd.extend_from_slice(&acl);
    Ok(sd)
}

/// Test and check helpers: building descriptors and reading who they allow.
pub mod sd {
    /// A SID from its authority and sub-authorities (`S-1-5-32-545` = `sid(5, &[32, 545])`).
    pub fn sid(authority: u8, subs: &[u32]) -> Vec<u8> {
        let mut s = vec![1, subs.len() as u8, 0, 0, 0, 0, 0, authority];
        for x in subs {
            s.extend_from_slice(&x.to_le_bytes());
        }
        s
    }

    /// An access-allowed ACE.
    pub fn allow(sid: &[u8], mask: u32, flags: u8) -> Vec<u8> {
        let mut a = vec![0, flags, 0, 0];
        a.extend_from_slice(&mask.to_le_bytes());
        a.extend_from_slice(sid);
        let len = a.len() as u16;
        a[2..4].copy_from_slice(&len.to_le_bytes());
        a
    }

    /// A self-relative descriptor with owner, group and a DACL of `aces`.
    pub fn descriptor(owner: &[u8], group: &[u8], aces: &[Vec<u8>]) -> Vec<u8> {
        let mut acl = vec![2, 0, 0, 0];
        acl.extend_from_slice(&(aces.len() as u16).to_le_bytes());
        acl.extend_from_slice(&[0, 0]);
        for a in aces {
            acl.extend_from_slice(a);
        }
        let l = acl.len() as u16;
        acl[2..4].copy_from_slice(&l.to_le_bytes());
        let mut sd = vec![1, 0, 0x04, 0x80];
        let (o, g) = (20u32, 20 + owner.len() as u32);
        let d = g + group.len() as u32;
        for off in [o, g, 0, d] {
            sd.extend_from_slice(&off.to_le_bytes());
        }
        sd.extend_from_slice(owner);
        sd.extend_from_slice(group);
        sd.extend_from_slice(&acl);
        sd
    }

    /// The access masks the DACL of `sd` allows `sid` on the object itself (inherit-only
    /// ACEs excluded), OR-ed; `None` when `sd` does not parse.
    pub fn allowed(sd: &[u8], sid: &[u8]) -> Option<u32> {
        let p = super::parse(sd).ok()?;
        Some(
            p.aces
                .iter()
                .filter(|a| a[0] == 0 && a[1] & super::INHERIT_ONLY == 0 && &a[8..] == sid)
                .map(|a| super::u32_at(a, 4).unwrap_or(0))
                .fold(0, |x, y| x | y),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::sd::*;
    use super::*;

    #[test]
    fn ntfs_times_round_trip_at_100ns() {
        let t = Time {
            sec: 1_700_000_000,
            nsec: 123_456_789,
        };
        let back = from_ntfs_time(to_ntfs_time(t));
        assert_eq!(
            back,
            Time {
                nsec: 123_456_700,
                ..t
            }
        );
        assert_eq!(from_ntfs_time(EPOCH_DIFF as u64), Time { sec: 0, nsec: 0 });
        let before = Time { sec: -1, nsec: 0 };
        assert_eq!(from_ntfs_time(to_ntfs_time(before)), before);
    }

    #[test]
    fn inheritance_follows_windows_rules() {
        let system = sid(5, &[18]);
        let admins = sid(5, &[32, 544]);
        let users = sid(5, &[32, 545]);
        let creator = sid(3, &[0]);
        let parent = descriptor(
            &system,
            &system,
            &[
                allow(&system, 0x1f01ff, OBJECT_INHERIT | CONTAINER_INHERIT),
                allow(&admins, 0x1f01ff, CONTAINER_INHERIT), // folders only
                allow(
                    &users,
                    0x1301bf,
                    OBJECT_INHERIT | CONTAINER_INHERIT | NO_PROPAGATE,
                ),
                allow(
                    &creator,
                    0x1f01ff,
                    OBJECT_INHERIT | CONTAINER_INHERIT | INHERIT_ONLY,
                ),
                allow(&sid(1, &[0]), 0x1200a9, 0), // not inheritable at all
            ],
        );
        let file = inherit(&parent, false).unwrap();
        assert_eq!(sd::allowed(&file, &system), Some(0x1f01ff));
        assert_eq!(sd::allowed(&file, &admins), Some(0));
        assert_eq!(sd::allowed(&file, &users), Some(0x1301bf));
        assert_eq!(sd::allowed(&file, &sid(1, &[0])), Some(0));
        assert_eq!(
            sd::allowed(&file, &creator),
            Some(0),
            "creator replaced by the owner"
        );
        let dir = inherit(&parent, true).unwrap();
        assert_eq!(sd::allowed(&dir, &admins), Some(0x1f01ff));
        assert_eq!(sd::allowed(&dir, &users), Some(0x1301bf));
        // A file two levels down: users' no-propagate ACE stopped at the first level.
        let deeper = inherit(&inherit(&dir, true).unwrap(), false).unwrap();
        assert_eq!(sd::allowed(&deeper, &system), Some(0x1f01ff));
        assert_eq!(sd::allowed(&deeper, &users), Some(0));
        // Every ACE a file got is marked inherited.
        let p = parse(&file).unwrap();
        assert!(p.aces.iter().all(|a| a[1] == INHERITED));
        assert!(inherit(b"junk", false).is_err());
    }

    #[test]
    fn a_hostile_folder_descriptor_never_panics() {
        // The target folder comes from the image: every truncation and every single-byte
        // change of a valid descriptor either parses or is refused, never panics.
        let parent = descriptor(
            &sid(5, &[18]),
            &sid(5, &[18]),
            &[
                allow(&sid(3, &[0]), 0x1f01ff, 0x0b),
                allow(&sid(5, &[32, 545]), 1, 3),
            ],
        );
        for n in 0..parent.len() {
            let _ = inherit(&parent[..n], false);
        }
        for i in 0..parent.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut p = parent.clone();
                p[i] = v;
                let _ = inherit(&p, true);
                let _ = inherit(&p, false);
            }
        }
    }
}
