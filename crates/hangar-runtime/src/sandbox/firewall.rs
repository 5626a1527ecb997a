//! The packet filter that keeps bridged sandboxes apart: one nftables table
//! per state dir (`inet hangar_<hash of the state dir>`), worked out from
//! the sandboxes' own records.
//!
//! ```text
//! <state_dir>/<id>/firewall.json   the sandbox's address and NetworkPolicy
//! <state_dir>/.firewall.lock       held while the table is changed
//! table inet hangar_<hash>         members, peers, open, allow, host_ports,
//!                                  denied sets; the chains below
//! ```
//!
//! Why records: the table is then a pure function of what is on disk
//! ([`ruleset`], unit-tested), so a sync rebuilds it whole and repairs
//! anything — a `nft flush ruleset`, a reboot, a server killed halfway. The
//! rebuild is one `nft -f` transaction (`delete table` and the new table at
//! once), so no packet ever sees a half-built table. A rebuild takes about
//! 20 ms, most of it the kernel's grace period for the deleted table, so a
//! create only adds its elements (or creates the table) and a delete only
//! takes its own out, a few ms each; either rebuilds when the table is not
//! as it expects. The last sandbox's delete removes the table: an empty one
//! would still hook every packet of the host. Creates and deletes change
//! the table under the lock, after writing (or while removing) their
//! record, so the table follows every record; the driver also syncs at
//! start and every few seconds ([`crate::SandboxDriver::resync`]).
//!
//! Why by source address: sandboxes have no capabilities (no
//! `CAP_NET_RAW`, `CAP_NET_ADMIN`), so they cannot send from an address
//! other than their own, and several state dirs (servers) may share one
//! bridge: each table judges only its own members' packets and packets to
//! them, never another table's.
//!
//! What the table does, for a packet from one of its members:
//! - to the host (the `input` hook): replies, and TCP to the member's
//!   `host_ports`; anything else is refused at once (TCP reset, ICMP
//!   prohibited), so the caller fails fast rather than timing out;
//! - to another sandbox on the bridge (the `forward` hook; bridged frames
//!   reach it through `br_netfilter`, which a sync turns on with
//!   `net.bridge.bridge-nf-call-iptables = 1`, as Docker and kube-proxy do):
//!   only the pairs in `peers` may open connections (same group, or a group
//!   the source names in `reach`), replies pass by conntrack;
//! - elsewhere (`forward`): everything for `open` members, the `allow`
//!   destinations for the others, refused otherwise.
//!
//! And to one of its members, from anything but the host itself: only
//! replies and connections from its peers. Sandboxes have no IPv6 at all
//! (see `net::create_netns`), so IPv4 rules are the whole story.
//!
//! The chains hook at priority `filter - 10` and only ever drop, reject or
//! return: Docker's own chains (and iptables' `FORWARD`) still see what the
//! table lets through, and nothing of theirs is changed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{io_error, SandboxError, Sandboxes};
use crate::network::{Egress, NetworkPolicy};
use crate::nft;

/// The file (in a sandbox's dir) that makes it a member of the table.
const RECORD_FILE: &str = "firewall.json";

/// Where `br_netfilter` says whether bridged IPv4 goes through the hooks.
const BRIDGE_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// A sandbox's record: its address and policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    ip: Ipv4Addr,
    policy: NetworkPolicy,
}

/// One member of the table, as [`ruleset`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    /// The sandbox's id (its directory's name).
    id: String,
    ip: Ipv4Addr,
    /// The policy's group, or the sandbox's id when it names none.
    group: String,
    policy: NetworkPolicy,
}

/// The table of the sandboxes under `state_dir`: `hangar_` and 12 hex
/// digits of the dir's hash (several servers may share a host).
pub fn table_name(state_dir: &Path) -> String {
    let hash = Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    format!("hangar_{}", hex::encode(&hash[..6]))
}

/// Makes sandbox `id` (at `ip`) a member with `policy` and syncs: when this
/// returns, the rules for it are in force. Called before the sandbox starts.
pub(super) fn admit(
    sandboxes: &Sandboxes,
    id: &str,
    dir: &Path,
    ip: IpAddr,
    policy: &NetworkPolicy,
) -> Result<(), SandboxError> {
    let IpAddr::V4(ip) = ip else {
        return Err(SandboxError::Network {
            id: id.to_owned(),
            action: "admit the sandbox to the packet filter",
            reason: format!("{ip} is not an IPv4 address"),
        });
    };
    let record = Record {
        ip,
        policy: policy.clone(),
    };
    let path = dir.join(RECORD_FILE);
    let partial = dir.join(format!("{RECORD_FILE}.partial"));
    let text = serde_json::to_vec(&record).expect("a record serializes");
    fs::write(&partial, text).map_err(io_error(id, "write", &partial))?;
    fs::rename(&partial, &path).map_err(io_error(id, "rename", &path))?;
    apply(sandboxes, Change::Add)
        .map(drop)
        .map_err(|reason| SandboxError::Network {
            id: id.to_owned(),
            action: "apply the packet filter's rules",
            reason,
        })
}

/// Takes sandbox `id` out of the table, if it is in it, and syncs. Called
/// before its address is given back.
pub(super) fn release(sandboxes: &Sandboxes, id: &str, dir: &Path) -> Result<(), SandboxError> {
    let path = dir.join(RECORD_FILE);
    if !path.exists() {
        return Ok(());
    }
    apply(sandboxes, Change::Remove(&path))
        .map(drop)
        .map_err(|reason| SandboxError::Network {
            id: id.to_owned(),
            action: "apply the packet filter's rules",
            reason,
        })
}

/// Rebuilds the table of `sandboxes` from its members' records (removes it
/// when there are none). Returns how many members it has.
pub fn sync(sandboxes: &Sandboxes) -> Result<usize, String> {
    apply(sandboxes, Change::Rebuild)
}

/// A connection a sandbox tried and the packet filter refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The sandbox's id.
    pub sandbox: String,
    /// Where it tried to go (TCP or UDP).
    pub destination: SocketAddrV4,
}

/// The connections refused since the last call (the kernel keeps each
/// source, destination and port once, for 5 minutes, in the table's
/// `denied` set), taken out of the set. A rebuild of the table loses what
/// was not taken yet, so the driver takes them before it syncs.
pub fn take_denials(sandboxes: &Sandboxes) -> Result<Vec<Denial>, String> {
    let state_dir = sandboxes.state_dir();
    let _lock = lock(state_dir)?;
    let table = table_name(state_dir);
    let output = Command::new("nft")
        .args(["-j", "list", "set", "inet", &table, "denied"])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run nft (Debian: nftables): {err}"))?;
    if !output.status.success() {
        // No table (no sandbox yet): nothing to take.
        return Ok(Vec::new());
    }
    let entries = denied_entries(&output.stdout)?;
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let listed: Vec<String> = entries
        .iter()
        .map(|(source, destination)| {
            format!("{source} . {} . {}", destination.ip(), destination.port())
        })
        .collect();
    nft::run(&format!(
        "delete element inet {table} denied {{ {} }}\n",
        listed.join(", ")
    ))?;
    let members = read_members(state_dir)?;
    Ok(entries
        .into_iter()
        .filter_map(|(source, destination)| {
            let member = members.iter().find(|member| member.ip == source)?;
            Some(Denial {
                sandbox: member.id.clone(),
                destination,
            })
        })
        .collect())
}

/// The `(source, destination)` elements of `nft -j list set`'s output.
fn denied_entries(json: &[u8]) -> Result<Vec<(Ipv4Addr, SocketAddrV4)>, String> {
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|err| format!("nft's listing of the denied set is not JSON: {err}"))?;
    let mut entries = Vec::new();
    let sets = value["nftables"].as_array().into_iter().flatten();
    for element in sets
        .filter_map(|item| item["set"]["elem"].as_array())
        .flatten()
    {
        // With a timeout an element is {"elem": {"val": …}}; without, the value.
        let concat = element["elem"]["val"]["concat"]
            .as_array()
            .or_else(|| element["concat"].as_array());
        let parsed = concat.and_then(|parts| {
            let source: Ipv4Addr = parts.first()?.as_str()?.parse().ok()?;
            let address: Ipv4Addr = parts.get(1)?.as_str()?.parse().ok()?;
            let port = u16::try_from(parts.get(2)?.as_u64()?).ok()?;
            Some((source, SocketAddrV4::new(address, port)))
        });
        if let Some(entry) = parsed {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// How [`apply`] brings the table in line with the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change<'a> {
    /// A record was added: add its elements (create the table if there is
    /// none); rebuild when that fails.
    Add,
    /// Remove this record: delete its elements (the table with the last
    /// one); rebuild when that fails.
    Remove(&'a Path),
    /// Rebuild the table whole.
    Rebuild,
}

fn apply(sandboxes: &Sandboxes, change: Change<'_>) -> Result<usize, String> {
    let state_dir = sandboxes.state_dir();
    let _lock = lock(state_dir)?;
    let subnet: Ipv4Net = sandboxes.bridge().subnet.parse().map_err(|_| {
        format!(
            "the bridge subnet {:?} is not IPv4",
            sandboxes.bridge().subnet
        )
    })?;
    let table = table_name(state_dir);
    let before = match change {
        Change::Remove(record) => {
            let before = read_members(state_dir)?;
            match fs::remove_file(record) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => {
                    return Err(format!("cannot remove {}: {err}", record.display()))
                }
                _ => Some(before),
            }
        }
        Change::Add | Change::Rebuild => None,
    };
    let members = read_members(state_dir)?;
    if !members.is_empty() {
        bridged_traffic_is_filtered()?;
    }
    let elements = Elements::of(&members);
    let quick = match (change, &before) {
        // The only member: the last one to leave deleted the table, so it is
        // most likely missing — create it, one `nft` run instead of a failed
        // addition and then the creation. `create` fails if it is there.
        (Change::Add, _) if members.len() == 1 => {
            nft::run(&creation(&table, subnet, &elements)).is_ok()
                || nft::run(&additions(&table, &elements)).is_ok()
        }
        (Change::Add, _) if !members.is_empty() => {
            nft::run(&additions(&table, &elements)).is_ok()
                || nft::run(&creation(&table, subnet, &elements)).is_ok()
        }
        // The last one deletes the table (a rebuild with no members): an
        // empty table would still hook every packet of the host.
        (Change::Remove(_), Some(before)) if !members.is_empty() => {
            nft::run(&removals(&table, &Elements::of(before), &elements)).is_ok()
        }
        _ => false,
    };
    if !quick {
        nft::run(&ruleset(&table, subnet, &members))?;
    }
    Ok(members.len())
}

fn lock(state_dir: &Path) -> Result<Flock<File>, String> {
    let path = state_dir.join(".firewall.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| format!("cannot lock {}: {errno}", path.display()))
}

/// Every record under `state_dir`; one that cannot be read is an error (a
/// sandbox left out would lose its peers, and its address could be
/// mistaken for nobody's).
fn read_members(state_dir: &Path) -> Result<Vec<Member>, String> {
    let entries = match fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(format!("cannot list {}: {err}", state_dir.display())),
    };
    let mut members = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| format!("cannot list {}: {err}", state_dir.display()))?;
        let path = entry.path().join(RECORD_FILE);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                continue
            }
            Err(err) => return Err(format!("cannot read {}: {err}", path.display())),
        };
        let record: Record = serde_json::from_slice(&text)
            .map_err(|err| format!("{} is malformed: {err}", path.display()))?;
        let id = entry.file_name().to_string_lossy().into_owned();
        let group = if record.policy.group.is_empty() {
            id.clone()
        } else {
            record.policy.group.clone()
        };
        members.push(Member {
            id,
            ip: record.ip,
            group,
            policy: record.policy,
        });
    }
    members.sort_by_key(|member| member.ip);
    Ok(members)
}

/// Makes sure bridged IPv4 frames go through the IPv4 hooks (see the module
/// docs): without it, sandboxes on one bridge would reach each other unseen.
fn bridged_traffic_is_filtered() -> Result<(), String> {
    match fs::read_to_string(BRIDGE_CALL_IPTABLES) {
        Ok(value) if value.trim() == "1" => Ok(()),
        Ok(_) => fs::write(BRIDGE_CALL_IPTABLES, b"1")
            .map_err(|err| format!("cannot set net.bridge.bridge-nf-call-iptables = 1: {err}")),
        Err(_) => {
            // Not loaded yet: `modprobe` is the only way in.
            let loaded = Command::new("modprobe")
                .arg("br_netfilter")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if loaded && Path::new(BRIDGE_CALL_IPTABLES).exists() {
                return bridged_traffic_is_filtered();
            }
            Err(
                "the br_netfilter kernel module is not loaded and cannot be \
                 (modprobe br_netfilter): sandboxes on the bridge could reach each \
                 other unfiltered"
                    .to_owned(),
            )
        }
    }
}

/// The elements of the table's sets for `members`, each set's sorted.
#[derive(Debug, Default, PartialEq, Eq)]
struct Elements {
    members: Vec<String>,
    peers: Vec<String>,
    open: Vec<String>,
    allow: Vec<String>,
    host_ports: Vec<String>,
}

impl Elements {
    fn of(members: &[Member]) -> Self {
        let groups: BTreeMap<&str, Vec<Ipv4Addr>> =
            members.iter().fold(BTreeMap::new(), |mut groups, member| {
                groups
                    .entry(member.group.as_str())
                    .or_default()
                    .push(member.ip);
                groups
            });
        let mut elements = Elements::default();
        for member in members {
            elements.members.push(member.ip.to_string());
            let reached = std::iter::once(member.group.as_str())
                .chain(member.policy.reach.iter().map(String::as_str));
            for group in reached {
                for ip in groups.get(group).into_iter().flatten() {
                    if *ip != member.ip {
                        elements.peers.push(format!("{} . {ip}", member.ip));
                    }
                }
            }
            match &member.policy.egress {
                Egress::Open => elements.open.push(member.ip.to_string()),
                Egress::None => {}
                Egress::Allow(destinations) => {
                    for destination in destinations {
                        let ports = match destination.port {
                            Some(port) => port.to_string(),
                            None => "0-65535".to_owned(),
                        };
                        elements
                            .allow
                            .push(format!("{} . {} . {ports}", member.ip, destination.net));
                    }
                }
            }
            for port in &member.policy.host_ports {
                elements.host_ports.push(format!("{} . {port}", member.ip));
            }
        }
        for set in [
            &mut elements.members,
            &mut elements.peers,
            &mut elements.open,
            &mut elements.allow,
            &mut elements.host_ports,
        ] {
            set.sort();
            set.dedup();
        }
        elements
    }

    /// `(set, elements)` in the order the table declares them.
    fn sets(&self) -> [(&'static str, &[String]); 5] {
        [
            ("members", &self.members),
            ("peers", &self.peers),
            ("open", &self.open),
            ("allow", &self.allow),
            ("host_ports", &self.host_ports),
        ]
    }
}

/// The `nft -f` script that adds `elements` to table `table` as it is:
/// what a new member needs, in a few milliseconds, where [`ruleset`]'s
/// whole rebuild waits for the kernel's grace period (about 20 ms here).
/// Fails when the table or a set is missing: then [`ruleset`] it is.
fn additions(table: &str, elements: &Elements) -> String {
    let mut script = String::new();
    for (set, values) in elements.sets() {
        if !values.is_empty() {
            let _ = writeln!(
                script,
                "add element inet {table} {set} {{ {} }}",
                values.join(", ")
            );
        }
    }
    script
}

/// The `nft -f` script that replaces table `table` with the rules for
/// `members` of the bridge's `subnet` — or only removes it when there are
/// none. See the module docs for what the rules do.
fn ruleset(table: &str, subnet: Ipv4Net, members: &[Member]) -> String {
    // `table` first: it makes the table if missing, so `delete` cannot fail.
    let mut script = format!("table inet {table}\ndelete table inet {table}\n");
    if !members.is_empty() {
        script.push_str(&table_block(table, subnet, &Elements::of(members)));
    }
    script
}

/// The `nft -f` script that makes table `table` for `elements`, and fails
/// (changing nothing) when there is one already.
fn creation(table: &str, subnet: Ipv4Net, elements: &Elements) -> String {
    format!(
        "create table inet {table}\n{}",
        table_block(table, subnet, elements)
    )
}

/// The `nft -f` script that takes out of table `table` the elements of
/// `before` that `after` has not: what a departing member leaves.
fn removals(table: &str, before: &Elements, after: &Elements) -> String {
    let mut script = String::new();
    for ((set, was), (_, now)) in before.sets().into_iter().zip(after.sets()) {
        let gone: Vec<&str> = was
            .iter()
            .filter(|element| !now.contains(element))
            .map(String::as_str)
            .collect();
        if !gone.is_empty() {
            let _ = writeln!(
                script,
                "delete element inet {table} {set} {{ {} }}",
                gone.join(", ")
            );
        }
    }
    script
}

/// Table `table` with its sets holding `elements` and its chains (see the
/// module docs for what they do).
fn table_block(table: &str, subnet: Ipv4Net, elements: &Elements) -> String {
    let mut script = String::new();
    let kinds = [
        ("members", "ipv4_addr", ""),
        ("peers", "ipv4_addr . ipv4_addr", ""),
        ("open", "ipv4_addr", ""),
        (
            "allow",
            "ipv4_addr . ipv4_addr . inet_service",
            " flags interval;",
        ),
        ("host_ports", "ipv4_addr . inet_service", ""),
    ];
    script.push_str(&format!("table inet {table} {{\n"));
    for ((name, kind, flags), (_, values)) in kinds.into_iter().zip(elements.sets()) {
        let _ = write!(script, "  set {name} {{ type {kind};{flags}");
        if !values.is_empty() {
            let _ = write!(script, " elements = {{ {} }}", values.join(", "));
        }
        script.push_str(" }\n");
    }
    // What was refused, for `take_denials` to tell the replica's owner.
    script.push_str(
        "  set denied { type ipv4_addr . ipv4_addr . inet_service; flags dynamic,timeout; \
         timeout 5m; size 65535; }\n",
    );
    // Refused, not dropped: the caller learns at once.
    let refuse =
        "    meta l4proto { tcp, udp } add @denied { ip saddr . ip daddr . th dport }\n    \
                  meta l4proto tcp reject with tcp reset\n    reject with icmpx admin-prohibited\n";
    let _ = write!(
        script,
        "  chain input {{
    type filter hook input priority filter - 10; policy accept;
    ip saddr @members jump to_host
  }}
  chain to_host {{
    ct state established,related accept
    ip saddr . tcp dport @host_ports accept
{refuse}  }}
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    ip saddr @members jump from_member
    ip daddr @members jump to_member
  }}
  chain from_member {{
    ct state established,related accept
    ip daddr {subnet} jump between
    ip saddr @open accept
    ip saddr . ip daddr . th dport @allow accept
{refuse}  }}
  chain between {{
    ip saddr . ip daddr @peers accept
{refuse}  }}
  chain to_member {{
    ct state established,related accept
    ip saddr . ip daddr @peers accept
    drop
  }}
}}
"
    );
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(ip: [u8; 4], group: &str, policy: NetworkPolicy) -> Member {
        Member {
            id: format!("s{}", ip[3]),
            ip: Ipv4Addr::from(ip),
            group: group.to_owned(),
            policy,
        }
    }

    fn subnet() -> Ipv4Net {
        "10.231.0.0/16".parse().expect("subnet")
    }

    /// The elements of set `name` in `script`.
    fn elements(script: &str, name: &str) -> Vec<String> {
        let line = script
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("set {name} ")))
            .unwrap_or_else(|| panic!("no set {name} in\n{script}"));
        match line.split_once("elements = { ") {
            Some((_, rest)) => rest
                .trim_end_matches(" } }")
                .split(", ")
                .map(str::to_owned)
                .collect(),
            None => Vec::new(),
        }
    }

    #[test]
    fn no_members_only_removes_the_table() {
        let script = ruleset("hangar_x", subnet(), &[]);
        assert_eq!(script, "table inet hangar_x\ndelete table inet hangar_x\n");
    }

    #[test]
    fn a_group_reaches_itself_and_what_it_names_only_one_way() {
        let reach_b = NetworkPolicy {
            reach: vec!["b".to_owned()],
            ..NetworkPolicy::default()
        };
        let members = [
            member([10, 231, 0, 2], "a", reach_b.clone()),
            member([10, 231, 0, 3], "a", reach_b),
            member([10, 231, 0, 4], "b", NetworkPolicy::default()),
            member([10, 231, 0, 5], "c", NetworkPolicy::default()),
        ];
        let script = ruleset("hangar_x", subnet(), &members);
        assert_eq!(
            elements(&script, "peers"),
            [
                "10.231.0.2 . 10.231.0.3",
                "10.231.0.2 . 10.231.0.4",
                "10.231.0.3 . 10.231.0.2",
                "10.231.0.3 . 10.231.0.4",
            ]
        );
        assert_eq!(elements(&script, "members").len(), 4);
        assert!(script.starts_with("table inet hangar_x\ndelete table inet hangar_x\n"));
        assert!(script.contains("ip daddr 10.231.0.0/16 jump between"));
    }

    #[test]
    fn egress_is_open_none_or_a_list_of_destinations() {
        let allow = NetworkPolicy {
            egress: Egress::Allow(vec![
                "10.0.0.0/8:5432".parse().expect("destination"),
                "192.0.2.7".parse().expect("destination"),
            ]),
            host_ports: vec![3128],
            ..NetworkPolicy::default()
        };
        let none = NetworkPolicy {
            egress: Egress::None,
            ..NetworkPolicy::default()
        };
        let members = [
            member([10, 231, 0, 2], "a", NetworkPolicy::default()),
            member([10, 231, 0, 3], "b", allow),
            member([10, 231, 0, 4], "c", none),
        ];
        let script = ruleset("hangar_x", subnet(), &members);
        assert_eq!(elements(&script, "open"), ["10.231.0.2"]);
        assert_eq!(
            elements(&script, "allow"),
            [
                "10.231.0.3 . 10.0.0.0/8 . 5432",
                "10.231.0.3 . 192.0.2.7/32 . 0-65535"
            ]
        );
        assert_eq!(elements(&script, "host_ports"), ["10.231.0.3 . 3128"]);
        assert!(elements(&script, "peers").is_empty());
    }

    #[test]
    fn a_new_member_only_adds_elements() {
        let members = [
            member([10, 231, 0, 2], "a", NetworkPolicy::default()),
            member([10, 231, 0, 3], "a", NetworkPolicy::default()),
        ];
        let script = additions("hangar_x", &Elements::of(&members));
        assert_eq!(
            script,
            "add element inet hangar_x members { 10.231.0.2, 10.231.0.3 }\n\
             add element inet hangar_x peers { 10.231.0.2 . 10.231.0.3, 10.231.0.3 . 10.231.0.2 }\n\
             add element inet hangar_x open { 10.231.0.2, 10.231.0.3 }\n"
        );
        // The same elements as the whole table's.
        let whole = ruleset("hangar_x", subnet(), &members);
        assert_eq!(elements(&whole, "peers").len(), 2);
    }

    #[test]
    fn a_departing_member_takes_only_its_elements() {
        let a = member([10, 231, 0, 2], "a", NetworkPolicy::default());
        let b = member([10, 231, 0, 3], "a", NetworkPolicy::default());
        let c = member([10, 231, 0, 4], "c", NetworkPolicy::default());
        let before = Elements::of(&[a.clone(), b.clone(), c]);
        let after = Elements::of(&[a, b]);
        assert_eq!(
            removals("hangar_x", &before, &after),
            "delete element inet hangar_x members { 10.231.0.4 }\n\
             delete element inet hangar_x open { 10.231.0.4 }\n"
        );
        assert!(creation("hangar_x", subnet(), &after).starts_with("create table inet hangar_x\n"));
    }

    #[test]
    fn denials_are_read_from_nfts_listing() {
        let listing =
            br#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet",
            "name": "denied", "table": "hangar_x", "elem": [
            {"elem": {"val": {"concat": ["10.231.0.2", "198.51.100.2", 443]}, "expires": 299}},
            {"elem": {"val": {"concat": ["10.231.0.3", "10.231.0.1", 7070]}, "expires": 12}}]}}]}"#;
        let addr = |text: &str| text.parse::<SocketAddrV4>().expect("addr");
        assert_eq!(
            denied_entries(listing).expect("parses"),
            [
                (Ipv4Addr::new(10, 231, 0, 2), addr("198.51.100.2:443")),
                (Ipv4Addr::new(10, 231, 0, 3), addr("10.231.0.1:7070")),
            ]
        );
        let empty = br#"{"nftables": [{"set": {"name": "denied"}}]}"#;
        assert_eq!(denied_entries(empty).expect("parses"), []);
        assert!(denied_entries(b"not json").is_err());
    }

    #[test]
    fn table_names_differ_per_state_dir_and_fit_nft() {
        let a = table_name(Path::new("/var/lib/hangar/sandboxes"));
        let b = table_name(Path::new("/tmp/other/sandboxes"));
        assert_ne!(a, b);
        assert!(a.starts_with("hangar_") && a.len() == 19, "{a}");
    }
}
