//! Subnet routes as this node keeps them: what it advertises and how it serves them (the
//! `--advertise-routes`, `--snat-subnet-routes`, `--routes-from-table` and `--routes-to-table`
//! flags, remembered in the config), and what it set up for them (recorded, so `down` removes
//! exactly that).

use crate::os::TargetOs;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Highest kernel routing table a flag may name; 253-255 are the kernel's own (default, main,
/// local) and 0 is unspecified, so they are refused.
const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];

fn yes() -> bool {
    true
}

/// The remembered subnet-route settings of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetRouteConfig {
    /// Prefixes this node routes for the mesh (`--advertise-routes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advertise: Vec<IpNet>,
    /// Masquerade mesh traffic into the advertised networks (`--snat-subnet-routes`, on by
    /// default) so their hosts need no route back to the mesh.
    #[serde(default = "yes")]
    pub snat: bool,
    /// A kernel table a routing daemon fills (`--routes-from-table`): its prefixes inside
    /// `from_table_allow` are advertised too, and followed as they come and go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_table: Option<u32>,
    /// What may be advertised from that table (`--routes-from-table-allow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_table_allow: Vec<IpNet>,
    /// The table's prefixes as last registered, to notice when they move.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_table_seen: Vec<IpNet>,
    /// A kernel table to copy accepted routes and the mesh network into
    /// (`--routes-to-table`), for a routing daemon to announce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_table: Option<u32>,
}

impl Default for SubnetRouteConfig {
    fn default() -> Self {
        SubnetRouteConfig {
            advertise: Vec::new(),
            snat: true,
            from_table: None,
            from_table_allow: Vec::new(),
            from_table_seen: Vec::new(),
            to_table: None,
        }
    }
}

impl SubnetRouteConfig {
    /// Whether nothing is set (the config file then leaves the section out).
    pub fn is_default(&self) -> bool {
        *self == SubnetRouteConfig::default()
    }

    /// Whether this node routes networks for the mesh.
    pub fn is_router(&self) -> bool {
        !self.advertise.is_empty() || self.from_table.is_some()
    }

    /// Every prefix this node advertises now: the configured ones, then those seen in the
    /// routing daemon's table (deduplicated).
    pub fn advertised(&self) -> Vec<IpNet> {
        let mut out = self.advertise.clone();
        for net in &self.from_table_seen {
            if !out.contains(net) {
                out.push(*net);
            }
        }
        out
    }
}

/// A comma-separated prefix list, or `none` (which clears it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixList(pub Vec<IpNet>);

impl std::str::FromStr for PrefixList {
    type Err = crate::types::InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value == "none" {
            return Ok(PrefixList(Vec::new()));
        }
        let mut out = Vec::new();
        for part in value.split(',').map(str::trim) {
            let net: IpNet = part.parse().map_err(|_| {
                crate::types::InvalidValue(format!(
                    "{:?} is not a prefix: write a comma-separated list such as \
                     192.168.10.0/24,fd00:10::/64, or \"none\"",
                    crate::types::describe(part)
                ))
            })?;
            if net != net.trunc() {
                return Err(crate::types::InvalidValue(format!(
                    "{net} has host bits set: did you mean {}?",
                    net.trunc()
                )));
            }
            if !out.contains(&net) {
                out.push(net);
            }
        }
        Ok(PrefixList(out))
    }
}

/// A kernel routing table number, or `none` (which clears it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableChoice(pub Option<u32>);

impl std::str::FromStr for TableChoice {
    type Err = crate::types::InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value == "none" {
            return Ok(TableChoice(None));
        }
        match value.parse::<u32>() {
            Ok(n) if !RESERVED_TABLES.contains(&n) => Ok(TableChoice(Some(n))),
            _ => Err(crate::types::InvalidValue(format!(
                "{:?} is not a routing table for this: give a number from 1 to 252 or above \
                 255 (not main, local or default), or \"none\"",
                crate::types::describe(value)
            ))),
        }
    }
}

/// A combination of subnet-route flags that cannot work, and how to fix it (a usage error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagError(pub String);

impl std::fmt::Display for FlagError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FlagError {}

/// The subnet-route flags of one `up` or `sync` run; `None` keeps what is remembered.
#[derive(Debug, Clone, Default)]
pub struct SubnetRouteFlags {
    /// `--advertise-routes`.
    pub advertise: Option<PrefixList>,
    /// `--snat-subnet-routes on|off`.
    pub snat: Option<bool>,
    /// `--routes-from-table`.
    pub from_table: Option<TableChoice>,
    /// `--routes-from-table-allow`.
    pub from_table_allow: Option<PrefixList>,
    /// `--routes-to-table`.
    pub to_table: Option<TableChoice>,
}

impl SubnetRouteConfig {
    /// Takes this run's flags into the remembered settings, refusing what cannot work.
    pub fn apply(&mut self, flags: SubnetRouteFlags, os: TargetOs) -> Result<(), FlagError> {
        if let Some(list) = flags.advertise {
            for net in &list.0 {
                if net.prefix_len() == 0 {
                    return Err(FlagError(format!(
                        "--advertise-routes {net}: a default route is what exit nodes are \
                         for: use --exit-node"
                    )));
                }
            }
            self.advertise = list.0;
        }
        if let Some(snat) = flags.snat {
            self.snat = snat;
        }
        if let Some(table) = flags.from_table {
            self.from_table = table.0;
            if table.0.is_none() {
                self.from_table_seen.clear();
            }
        }
        if let Some(allow) = flags.from_table_allow {
            self.from_table_allow = allow.0;
        }
        if let Some(table) = flags.to_table {
            self.to_table = table.0;
        }
        if self.from_table.is_some() && self.from_table_allow.is_empty() {
            return Err(FlagError(
                "--routes-from-table needs --routes-from-table-allow PREFIXES: only \
                 prefixes inside the allow-list are advertised from the table"
                    .into(),
            ));
        }
        let linux_only = self.is_router() || self.to_table.is_some();
        if linux_only && os != TargetOs::Linux {
            return Err(FlagError(format!(
                "{os} cannot be a subnet router yet: run --advertise-routes, \
                 --routes-from-table and --routes-to-table on Linux (--accept-routes works \
                 everywhere)"
            )));
        }
        Ok(())
    }
}

/// What this node set up as a subnet router, so a change replaces it and `down` removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedSubnetRouter {
    /// The prefixes it serves.
    pub prefixes: Vec<IpNet>,
    /// Who may reach what of them (each peer's `reach` from the server, per policy).
    #[serde(default)]
    pub access: Vec<crate::os::subnet_routes::Access>,
    /// The mesh networks (masqueraded from when `snat`).
    pub mesh: Vec<IpNet>,
    /// Whether mesh traffic is masqueraded into the networks.
    pub snat: bool,
}

/// Routes copied into a routing daemon's table (`--routes-to-table`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedTableRoutes {
    /// The table.
    pub table: u32,
    /// The prefixes routed through the interface in it.
    pub routes: Vec<IpNet>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_lists_parse_clear_and_refuse_with_the_fix() {
        let list: PrefixList = "192.168.10.0/24, fd00:10::/64".parse().unwrap();
        assert_eq!(list.0.len(), 2);
        assert_eq!("none".parse::<PrefixList>().unwrap().0, vec![]);
        let e = "192.168.10.1/24".parse::<PrefixList>().unwrap_err();
        assert!(e.0.contains("did you mean 192.168.10.0/24"), "{}", e.0);
        let e = "lan".parse::<PrefixList>().unwrap_err();
        assert!(e.0.contains("is not a prefix"), "{}", e.0);
        assert!("254".parse::<TableChoice>().is_err());
        assert_eq!("100".parse::<TableChoice>().unwrap().0, Some(100));
    }

    #[test]
    fn flags_are_remembered_checked_and_cleared() {
        let mut c = SubnetRouteConfig::default();
        let flags = SubnetRouteFlags {
            advertise: Some("198.18.10.0/24".parse().unwrap()),
            ..SubnetRouteFlags::default()
        };
        c.apply(flags, TargetOs::Linux).unwrap();
        assert!(c.is_router() && c.snat);
        c.apply(SubnetRouteFlags::default(), TargetOs::Linux)
            .unwrap();
        assert_eq!(c.advertise.len(), 1, "remembered");
        let e = c
            .clone()
            .apply(SubnetRouteFlags::default(), TargetOs::Macos)
            .unwrap_err();
        assert!(e.to_string().contains("on Linux"), "{e}");
        let from = SubnetRouteFlags {
            from_table: Some(TableChoice(Some(100))),
            ..SubnetRouteFlags::default()
        };
        let e = c.apply(from, TargetOs::Linux).unwrap_err();
        assert!(e.to_string().contains("--routes-from-table-allow"), "{e}");
        let clear = SubnetRouteFlags {
            advertise: Some(PrefixList(Vec::new())),
            from_table: Some(TableChoice(None)),
            ..SubnetRouteFlags::default()
        };
        c.apply(clear, TargetOs::Linux).unwrap();
        assert!(c.is_default());
    }
}
