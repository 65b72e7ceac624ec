//! The wire side of live sync: parsing `GET /peers?peer_id=ID&since=N&wait=SECS`,
//! serializing a tag group's delta once, and cutting each caller's own entry out of it.
//! Long-polls wait in the connection layer (`super::http::Park`), woken by a `Notifier`.
//!
//! The change log itself (what changed since N, and who may see it) is `super::changes`;
//! this module only turns its answers into bytes and waits.

use crate::types::PeerId;
use std::time::Duration;

/// Longest long-poll a client may ask for: long enough that an idle mesh costs one request
/// a minute per node, short enough that a dead connection is noticed.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// What a `GET /peers` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersQuery {
    /// The caller's peer id.
    pub peer_id: PeerId,
    /// The version the caller has (`since`), if it wants only what changed after it.
    pub since: Option<u64>,
    /// How long to hold the request when nothing changed (`wait`, needs `since`).
    pub wait: Option<Duration>,
}

/// A `/peers` query that cannot be answered: the text names the parameter and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError(pub String);

impl From<String> for QueryError {
    fn from(text: String) -> QueryError {
        QueryError(text)
    }
}

impl From<&str> for QueryError {
    fn from(text: &str) -> QueryError {
        QueryError(text.to_owned())
    }
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PeersQuery {
    /// Parses the query parameters (given by `param`), naming the bad one and how to fix it.
    pub fn parse<'a>(param: impl Fn(&str) -> Option<&'a str>) -> Result<PeersQuery, QueryError> {
        let raw_id = param("peer_id")
            .ok_or("missing query parameter `peer_id`: call GET /peers?peer_id=YOUR_PEER_ID")?;
        let peer_id: PeerId = raw_id
            .parse()
            .map_err(|e| format!("query parameter `peer_id`: {e}"))?;
        let number = |name: &str| -> Result<Option<u64>, QueryError> {
            param(name)
                .map(|raw| {
                    // Digits only: `+5`, `-1` and `0x10` are mistakes, not numbers.
                    if raw.is_empty() || raw.len() > 19 || !raw.bytes().all(|b| b.is_ascii_digit())
                    {
                        return Err(QueryError(format!(
                            "query parameter `{name}`: {:?} is not a whole number",
                            crate::types::describe(raw)
                        )));
                    }
                    raw.parse::<u64>()
                        .map_err(|e| QueryError(format!("query parameter `{name}`: {e}")))
                })
                .transpose()
        };
        let since = number("since")?;
        let wait = number("wait")?;
        if let Some(secs) = wait {
            if since.is_none() {
                return Err(
                    "query parameter `wait` needs `since`: a long-poll waits for changes \
                            after a version (take `version` from a previous /peers answer)"
                        .into(),
                );
            }
            if secs > MAX_WAIT.as_secs() {
                return Err(QueryError(format!(
                    "query parameter `wait`: {secs} s is too long, ask for at most {} s",
                    MAX_WAIT.as_secs()
                )));
            }
        }
        Ok(PeersQuery {
            peer_id,
            since,
            wait: wait.filter(|s| *s > 0).map(Duration::from_secs),
        })
    }
}

/// One tag group's delta at one version, serialized once and shared by every caller of the
/// group that holds the same `since`.
#[derive(Debug, Default)]
pub struct GroupDelta {
    /// The version this delta brings its callers to.
    pub version: u64,
    /// Each changed peer's id and its serialized `/peers` entry.
    pub changed: Vec<(PeerId, Vec<u8>)>,
    /// Ids to drop.
    pub removed: Vec<PeerId>,
}

impl GroupDelta {
    /// Whether the caller `me` itself changed (is among the changed or removed peers).
    pub fn mentions(&self, me: &PeerId) -> bool {
        self.changed.iter().any(|(id, _)| id == me) || self.removed.contains(me)
    }

    /// Whether the caller `me` has anything to apply (its own entry never counts).
    pub fn is_empty_for(&self, me: &PeerId) -> bool {
        self.changed.iter().all(|(id, _)| id == me) && self.removed.iter().all(|id| id == me)
    }

    /// The answer body for caller `me`: `{"success":true,"version":M,"full":false,
    /// "changed":[...],"removed":[...]}` without its own entry.
    pub fn body_for(&self, me: &PeerId) -> Vec<u8> {
        let size: usize =
            self.changed.iter().map(|(_, e)| e.len() + 1).sum::<usize>() + self.removed.len() * 24;
        let mut body = Vec::with_capacity(96 + size);
        body.extend_from_slice(
            format!(
                "{{\"success\":true,\"version\":{},\"full\":false,\"changed\":[",
                self.version
            )
            .as_bytes(),
        );
        let mut first = true;
        for (id, entry) in self.changed.iter().filter(|(id, _)| id != me) {
            let _ = id;
            if !first {
                body.push(b',');
            }
            first = false;
            body.extend_from_slice(entry);
        }
        body.extend_from_slice(b"],\"removed\":");
        let removed: Vec<&PeerId> = self.removed.iter().filter(|id| *id != me).collect();
        serde_json::to_writer(&mut body, &removed).expect("peer ids serialize");
        body.push(b'}');
        body
    }
}

/// The empty delta: nothing changed up to `version` (a long-poll whose time ran out).
pub fn empty_delta(version: u64) -> Vec<u8> {
    GroupDelta {
        version,
        ..GroupDelta::default()
    }
    .body_for(&"peer-0000000000000000".parse().expect("literal"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(q: &str) -> Result<PeersQuery, QueryError> {
        let map: HashMap<&str, &str> = q.split('&').filter_map(|p| p.split_once('=')).collect();
        PeersQuery::parse(|name| map.get(name).copied())
    }

    const ID: &str = "peer-0123456789abcdef";

    #[test]
    fn queries_parse_since_and_wait() {
        let q = parse(&format!("peer_id={ID}")).unwrap();
        assert_eq!((q.since, q.wait), (None, None));
        let q = parse(&format!("peer_id={ID}&since=17&wait=60")).unwrap();
        assert_eq!((q.since, q.wait), (Some(17), Some(Duration::from_secs(60))));
        let q = parse(&format!("peer_id={ID}&since=17&wait=0")).unwrap();
        assert_eq!(q.wait, None);
    }

    #[test]
    fn bad_queries_name_the_parameter_and_the_fix() {
        for (q, needle) in [
            ("since=1".to_string(), "missing query parameter `peer_id`"),
            (format!("peer_id={ID}&since=-1"), "`since`"),
            (format!("peer_id={ID}&since=+1"), "`since`"),
            (format!("peer_id={ID}&since="), "`since`"),
            (
                format!("peer_id={ID}&since=99999999999999999999"),
                "`since`",
            ),
            (format!("peer_id={ID}&wait=5"), "needs `since`"),
            (format!("peer_id={ID}&since=1&wait=61"), "at most 60 s"),
        ] {
            let err = parse(&q).unwrap_err();
            assert!(err.0.contains(needle), "{q}: {err}");
        }
    }

    fn id(n: u8) -> PeerId {
        format!("peer-{n:016x}").parse().unwrap()
    }

    #[test]
    fn a_delta_body_leaves_the_caller_out() {
        let delta = GroupDelta {
            version: 42,
            changed: vec![
                (id(1), br#"{"id":"a"}"#.to_vec()),
                (id(2), br#"{"id":"b"}"#.to_vec()),
            ],
            removed: vec![id(3), id(2)],
        };
        let body: serde_json::Value = serde_json::from_slice(&delta.body_for(&id(1))).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"success": true, "version": 42, "full": false,
                "changed": [{"id": "b"}], "removed": [id(3).as_str(), id(2).as_str()]})
        );
        let body: serde_json::Value = serde_json::from_slice(&delta.body_for(&id(2))).unwrap();
        assert_eq!(body["changed"], serde_json::json!([{"id": "a"}]));
        assert_eq!(body["removed"], serde_json::json!([id(3).as_str()]));
        assert!(!delta.is_empty_for(&id(1)));
        let own = GroupDelta {
            version: 1,
            changed: vec![(id(1), b"{}".to_vec())],
            removed: vec![id(1)],
        };
        assert!(own.is_empty_for(&id(1)));
        let empty: serde_json::Value = serde_json::from_slice(&empty_delta(7)).unwrap();
        assert_eq!(
            empty,
            serde_json::json!({"success": true, "version": 7, "full": false, "changed": [], "removed": []})
        );
    }
}
