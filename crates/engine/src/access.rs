//! Host groups (igroups) and LUN maps: which clients may see which LUNs.
//!
//! An igroup names hosts by source address (CIDR) or by TLS client
//! certificate subject CN. A LUN mapped to igroups is visible only to
//! their members; a LUN with no maps is visible to everyone in an *open*
//! pool and to no one in a *closed* one. Snapshots follow their LUN.
//! Igroups and maps are stored with the rest of the metadata and change in
//! one commit.

use crate::codec;
use crate::state::State;
use crate::types::{Error, Result, NAME_BYTES_MAX};
use crate::Engine;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

/// Most igroups in a pool, and most members in one igroup.
pub const IGROUPS_MAX: usize = 4096;
pub const IGROUP_MEMBERS_MAX: usize = 1024;
/// Longest TLS certificate CN accepted as a member (X.509's upper bound).
pub const CERT_CN_BYTES_MAX: usize = 64;

/// Who a client is, as far as access control can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Source address; unix-socket clients count as the loopback address.
    pub addr: Option<IpAddr>,
    /// Subject CN of a verified TLS client certificate.
    pub cert_cn: Option<String>,
}

impl std::fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.addr {
            Some(a) => write!(f, "{a}")?,
            None => write!(f, "unknown address")?,
        }
        if let Some(cn) = &self.cert_cn {
            write!(f, " (certificate CN \"{cn}\")")?;
        }
        Ok(())
    }
}

/// One member of an igroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Address(IpNet),
    CertCn(String),
}

impl Member {
    /// Parses a CIDR (`10.0.0.0/8`, `fd00::/8`) or a bare address (a /32 or
    /// /128), normalized to its network.
    pub fn address(cidr: &str) -> Result<Member> {
        let net = match cidr.parse::<IpNet>() {
            Ok(n) => n.trunc(),
            Err(_) => match cidr.parse::<IpAddr>() {
                Ok(a) => IpNet::from(a),
                Err(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "\"{cidr}\" is not an address or CIDR (like 192.0.2.0/24 or 2001:db8::/32)"
                    )))
                }
            },
        };
        Ok(Member::Address(net))
    }

    pub fn cert_cn(cn: &str) -> Result<Member> {
        if cn.is_empty() || cn.len() > CERT_CN_BYTES_MAX || cn.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "a certificate CN must be 1 to {CERT_CN_BYTES_MAX} bytes without control characters"
            )));
        }
        Ok(Member::CertCn(cn.to_string()))
    }

    fn matches(&self, who: &ClientIdentity) -> bool {
        match self {
            Member::Address(net) => who.addr.is_some_and(|a| net.contains(&canonical(a))),
            Member::CertCn(cn) => who.cert_cn.as_deref() == Some(cn.as_str()),
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, from dual-stack sockets)
/// match IPv4 CIDRs.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        v4 => v4,
    }
}

/// An igroup as stored and as reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgroupInfo {
    pub name: String,
    /// CIDRs, normalized (`10.1.2.3` becomes `10.1.2.3/32`).
    pub addresses: Vec<String>,
    pub cert_cns: Vec<String>,
    /// LUNs mapped to this igroup (filled in when reported).
    #[serde(default)]
    pub luns: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Igroup {
    pub members: Vec<Member>,
}

impl Igroup {
    fn matches(&self, who: &ClientIdentity) -> bool {
        self.members.iter().any(|m| m.matches(who))
    }

    pub(crate) fn record(&self) -> codec::IgroupRecord {
        let mut r = codec::IgroupRecord::default();
        for m in &self.members {
            match m {
                Member::Address(n) => r.addresses.push(n.to_string()),
                Member::CertCn(c) => r.cert_cns.push(c.clone()),
            }
        }
        r
    }

    pub(crate) fn from_record(r: codec::IgroupRecord) -> Result<Igroup> {
        let mut members = Vec::new();
        for a in &r.addresses {
            members.push(Member::address(a).map_err(|e| Error::Store(e.to_string()))?);
        }
        for c in &r.cert_cns {
            members.push(Member::CertCn(c.clone()));
        }
        Ok(Igroup { members })
    }
}

/// An igroup name: one segment of `[A-Za-z0-9._-]`.
pub fn validate_igroup_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "igroup name \"{name}\" must be 1 to {NAME_BYTES_MAX} of letters, digits, '.', '_' and '-'"
        )))
    }
}

pub(crate) type Igroups = BTreeMap<String, Igroup>;

fn igroup_info(s: &State, name: &str, g: &Igroup) -> IgroupInfo {
    let r = g.record();
    IgroupInfo {
        name: name.to_string(),
        addresses: r.addresses,
        cert_cns: r.cert_cns,
        luns: s
            .names
            .iter()
            .filter(|(_, id)| s.luns[id].maps.contains(name))
            .map(|(n, _)| n.clone())
            .collect(),
    }
}

/// Whether LUN `lun` (a name) is visible to `who` under the pool's mode.
fn visible(s: &State, lun: &str, who: &ClientIdentity) -> bool {
    let Some(l) = s.names.get(lun).and_then(|id| s.luns.get(id)) else {
        return false;
    };
    if l.maps.is_empty() {
        return s.open_access;
    }
    l.maps
        .iter()
        .any(|g| s.igroups.get(g).is_some_and(|g| g.matches(who)))
}

impl Engine {
    /// Runs one access change under the state lock; when it succeeds,
    /// bumps the access generation and commits it.
    fn change_access<T>(&self, change: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let out = {
            let mut s = self.state.lock();
            s.check_open()?;
            change(&mut s)?
        };
        self.access_gen.fetch_add(1, Ordering::AcqRel);
        self.flush()?;
        Ok(out)
    }

    /// Bumped by every change to igroups, maps or the access mode, so that
    /// open connections can re-check their access cheaply.
    pub fn access_generation(&self) -> u64 {
        self.access_gen.load(Ordering::Acquire)
    }

    /// Whether an unmapped LUN is visible to every client.
    pub fn access_open(&self) -> bool {
        self.state.lock().open_access
    }

    pub fn set_access_open(&self, open: bool) -> Result<()> {
        self.change_access(|s| {
            s.open_access = open;
            s.dirty.pool = true;
            Ok(())
        })?;
        self.note(
            "pool-access-changed",
            "pool",
            if open {
                "The pool is open: LUNs without maps are visible to every NBD client.".into()
            } else {
                "The pool is closed: a LUN is visible only to the igroups it is mapped to.".into()
            },
        );
        Ok(())
    }

    /// Whether the export named `export` (`LUN` or `LUN@SNAPSHOT`; the
    /// snapshot follows its LUN) is visible to `who`.
    pub fn visible_to(&self, export: &str, who: &ClientIdentity) -> bool {
        let lun = export.split_once('@').map_or(export, |(l, _)| l);
        visible(&self.state.lock(), lun, who)
    }

    /// Names of the LUNs visible to `who`.
    pub fn luns_visible_to(&self, who: &ClientIdentity) -> Vec<String> {
        let s = self.state.lock();
        s.names
            .keys()
            .filter(|n| visible(&s, n, who))
            .cloned()
            .collect()
    }

    pub fn create_igroup(&self, name: &str, members: Vec<Member>) -> Result<IgroupInfo> {
        validate_igroup_name(name)?;
        check_member_count(members.len())?;
        self.change_access(|s| {
            if s.igroups.contains_key(name) {
                return Err(Error::AlreadyExists {
                    kind: "igroup",
                    name: name.to_string(),
                });
            }
            if s.igroups.len() >= IGROUPS_MAX {
                return Err(Error::InvalidArgument(format!(
                    "a pool holds at most {IGROUPS_MAX} igroups"
                )));
            }
            let mut g = Igroup::default();
            for m in members {
                if !g.members.contains(&m) {
                    g.members.push(m);
                }
            }
            s.igroups.insert(name.to_string(), g);
            s.dirty.igroups.insert(name.to_string());
            Ok(())
        })?;
        self.note(
            "igroup-created",
            name,
            format!("Igroup \"{name}\" created."),
        );
        self.igroup_info(name)
    }

    pub fn igroup_info(&self, name: &str) -> Result<IgroupInfo> {
        let s = self.state.lock();
        s.check_open()?;
        let g = s
            .igroups
            .get(name)
            .ok_or_else(|| Error::not_found("igroup", name))?;
        Ok(igroup_info(&s, name, g))
    }

    pub fn list_igroups(&self) -> Result<Vec<IgroupInfo>> {
        let s = self.state.lock();
        s.check_open()?;
        Ok(s.igroups
            .iter()
            .map(|(n, g)| igroup_info(&s, n, g))
            .collect())
    }

    /// Adds a member (adding one already there is refused).
    pub fn igroup_add(&self, name: &str, member: Member) -> Result<IgroupInfo> {
        self.change_access(|s| {
            let g = s
                .igroups
                .get_mut(name)
                .ok_or_else(|| Error::not_found("igroup", name))?;
            if g.members.contains(&member) {
                return Err(Error::AlreadyExists {
                    kind: "igroup member",
                    name: describe(&member),
                });
            }
            check_member_count(g.members.len() + 1)?;
            g.members.push(member.clone());
            s.dirty.igroups.insert(name.to_string());
            Ok(())
        })?;
        self.note(
            "igroup-changed",
            name,
            format!("Igroup \"{name}\" gained {}.", describe(&member)),
        );
        self.igroup_info(name)
    }

    pub fn igroup_remove(&self, name: &str, member: Member) -> Result<IgroupInfo> {
        self.change_access(|s| {
            let g = s
                .igroups
                .get_mut(name)
                .ok_or_else(|| Error::not_found("igroup", name))?;
            let Some(i) = g.members.iter().position(|m| *m == member) else {
                return Err(Error::not_found(
                    "igroup member",
                    format!("{} in {name}", describe(&member)),
                ));
            };
            g.members.remove(i);
            s.dirty.igroups.insert(name.to_string());
            Ok(())
        })?;
        self.note(
            "igroup-changed",
            name,
            format!("Igroup \"{name}\" lost {}.", describe(&member)),
        );
        self.igroup_info(name)
    }

    /// Deletes an igroup; refused while LUNs are mapped to it.
    pub fn delete_igroup(&self, name: &str) -> Result<()> {
        self.change_access(|s| {
            let g = s
                .igroups
                .get(name)
                .ok_or_else(|| Error::not_found("igroup", name))?;
            let info = igroup_info(s, name, g);
            if !info.luns.is_empty() {
                return Err(Error::HasDependents(format!(
                    "igroup \"{name}\" is mapped to LUN(s) {}; unmap them first",
                    info.luns.join(", ")
                )));
            }
            s.igroups.remove(name);
            s.dirty.igroups.insert(name.to_string());
            Ok(())
        })?;
        self.note(
            "igroup-deleted",
            name,
            format!("Igroup \"{name}\" deleted."),
        );
        Ok(())
    }

    /// Maps a LUN to an igroup: its members see the LUN and its snapshots.
    pub fn map_lun(&self, lun: &str, igroup: &str) -> Result<()> {
        self.change_access(|s| {
            let id = s.lun_id(lun)?;
            if !s.igroups.contains_key(igroup) {
                return Err(Error::not_found("igroup", igroup));
            }
            let l = s.lun_mut(id)?;
            if !l.maps.insert(igroup.to_string()) {
                return Err(Error::AlreadyExists {
                    kind: "LUN map",
                    name: format!("{lun} to {igroup}"),
                });
            }
            s.dirty.luns.insert(id);
            Ok(())
        })?;
        self.note(
            "lun-mapped",
            lun,
            format!("LUN \"{lun}\" mapped to igroup \"{igroup}\"."),
        );
        Ok(())
    }

    pub fn unmap_lun(&self, lun: &str, igroup: &str) -> Result<()> {
        self.change_access(|s| {
            let id = s.lun_id(lun)?;
            let l = s.lun_mut(id)?;
            if !l.maps.remove(igroup) {
                return Err(Error::not_found("LUN map", format!("{lun} to {igroup}")));
            }
            s.dirty.luns.insert(id);
            Ok(())
        })?;
        self.note(
            "lun-unmapped",
            lun,
            format!("LUN \"{lun}\" unmapped from igroup \"{igroup}\"."),
        );
        Ok(())
    }
}

fn check_member_count(n: usize) -> Result<()> {
    if n > IGROUP_MEMBERS_MAX {
        return Err(Error::InvalidArgument(format!(
            "an igroup holds at most {IGROUP_MEMBERS_MAX} members"
        )));
    }
    Ok(())
}

fn describe(m: &Member) -> String {
    match m {
        Member::Address(n) => format!("address {n}"),
        Member::CertCn(c) => format!("certificate CN \"{c}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(addr: &str, cn: Option<&str>) -> ClientIdentity {
        ClientIdentity {
            addr: Some(addr.parse().unwrap()),
            cert_cn: cn.map(str::to_string),
        }
    }

    #[test]
    fn members_match() {
        let net = Member::address("10.1.0.0/16").unwrap();
        assert!(net.matches(&who("10.1.200.3", None)));
        assert!(net.matches(&who("::ffff:10.1.0.1", None)));
        assert!(!net.matches(&who("10.2.0.1", None)));
        let host = Member::address("127.0.0.1").unwrap();
        assert_eq!(host, Member::Address("127.0.0.1/32".parse().unwrap()));
        assert!(host.matches(&who("127.0.0.1", None)));
        assert!(!host.matches(&who("127.0.0.2", None)));
        assert_eq!(
            Member::address("10.1.2.3/8").unwrap(),
            Member::address("10.0.0.0/8").unwrap()
        );
        let v6 = Member::address("fd00::/8").unwrap();
        assert!(v6.matches(&who("fd12::1", None)));
        let cn = Member::cert_cn("host-a").unwrap();
        assert!(cn.matches(&who("192.0.2.1", Some("host-a"))));
        assert!(!cn.matches(&who("192.0.2.1", Some("host-b"))));
        assert!(!cn.matches(&who("192.0.2.1", None)));
        for bad in ["", "10.0.0.0/33", "host", "1.2.3", "::g"] {
            assert!(Member::address(bad).is_err(), "{bad}");
        }
        assert!(Member::cert_cn("").is_err());
        assert!(Member::cert_cn(&"x".repeat(65)).is_err());
        assert!(Member::cert_cn("a\nb").is_err());
    }

    #[test]
    fn names() {
        assert!(validate_igroup_name("esx-cluster_1.a").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(validate_igroup_name(bad).is_err(), "{bad}");
        }
    }
}
