//! Writing Bundles whose entries embed stored resource text verbatim.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One entry as sent: the resource is kept as text.
#[derive(Debug, serde::Deserialize)]
pub struct EntryText {
    #[serde(rename = "fullUrl")]
    /// `fullUrl`.
    pub full_url: Option<String>,
    /// The resource's JSON text.
    pub resource: Option<Box<RawValue>>,
    /// `request`.
    pub request: Option<Value>,
}

/// The parts of a Bundle that transaction and batch processing read.
#[derive(Debug, serde::Deserialize)]
pub struct BundleText {
    #[serde(rename = "resourceType")]
    /// `resourceType`.
    pub resource_type: Option<String>,
    #[serde(rename = "type")]
    /// `type`.
    pub bundle_type: Option<String>,
    #[serde(default)]
    /// `entry`.
    pub entry: Vec<EntryText>,
}

impl BundleText {
    /// Reads a Bundle body (a UTF-8 BOM is tolerated).
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        serde_json::from_slice(bytes)
    }
}

/// One entry of a Bundle being written.
#[derive(Debug, Default)]
pub struct BundleEntry<'a> {
    /// `fullUrl`.
    pub full_url: Option<String>,
    /// The resource as stored JSON text (embedded without re-parsing).
    pub resource: Option<&'a str>,
    /// A resource built by the server (used when `resource` is `None`).
    pub resource_value: Option<Value>,
    /// `search` (`{"mode": "match"}` etc.).
    pub search: Option<Value>,
    /// `request`.
    pub request: Option<Value>,
    /// `response`.
    pub response: Option<Value>,
}

/// Builds a Bundle as JSON text.
#[derive(Debug)]
pub struct BundleWriter {
    head: Map<String, Value>,
    entries: Vec<String>,
    /// The entries' size so far, in bytes.
    bytes: usize,
}

impl BundleWriter {
    /// A Bundle of this `type` (`searchset`, `history`, `transaction-response`, ...).
    pub fn new(bundle_type: &str) -> Self {
        let mut head = Map::new();
        head.insert("resourceType".into(), Value::from("Bundle"));
        head.insert("id".into(), Value::from(uuid_like()));
        head.insert("type".into(), Value::from(bundle_type));
        Self {
            head,
            entries: Vec::new(),
            bytes: 0,
        }
    }

    /// Sets `meta.lastUpdated`.
    pub fn last_updated(&mut self, instant: &str) -> &mut Self {
        self.head
            .insert("meta".into(), serde_json::json!({ "lastUpdated": instant }));
        self
    }

    /// Sets `total`.
    pub fn total(&mut self, total: u64) -> &mut Self {
        self.head.insert("total".into(), Value::from(total));
        self
    }

    /// Adds a `link` (`self`, `next`, `previous`).
    pub fn link(&mut self, relation: &str, url: &str) -> &mut Self {
        let links = self
            .head
            .entry("link")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = links {
            a.push(serde_json::json!({ "relation": relation, "url": url }));
        }
        self
    }

    /// Adds an entry.
    pub fn entry(&mut self, e: BundleEntry<'_>) -> &mut Self {
        let mut s = String::from("{");
        let mut first = true;
        let mut field = |s: &mut String, name: &str, text: &str| {
            if !first {
                s.push(',');
            }
            first = false;
            s.push('"');
            s.push_str(name);
            s.push_str("\":");
            s.push_str(text);
        };
        if let Some(u) = &e.full_url {
            field(&mut s, "fullUrl", &Value::from(u.as_str()).to_string());
        }
        if let Some(r) = e.resource {
            field(&mut s, "resource", r);
        } else if let Some(v) = &e.resource_value {
            field(&mut s, "resource", &v.to_string());
        }
        for (name, v) in [
            ("search", &e.search),
            ("request", &e.request),
            ("response", &e.response),
        ] {
            if let Some(v) = v {
                field(&mut s, name, &v.to_string());
            }
        }
        s.push('}');
        self.bytes += s.len() + 1;
        self.entries.push(s);
        self
    }

    /// Number of entries so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The size of the entries so far, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The Bundle as JSON text.
    pub fn finish(self) -> String {
        let mut head = Value::Object(self.head).to_string();
        if self.entries.is_empty() {
            return head;
        }
        head.pop(); // the closing brace
        head.push_str(",\"entry\":[");
        head.push_str(&self.entries.join(","));
        head.push_str("]}");
        head
    }
}

/// A random id for server-built Bundles (not stored, so uniqueness per response suffices).
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
    format!("{t:x}-{n:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeds_raw_text() {
        let mut b = BundleWriter::new("searchset");
        b.total(1).link("self", "http://x/fhir/Patient");
        b.entry(BundleEntry {
            full_url: Some("http://x/fhir/Observation/1".into()),
            resource: Some(r#"{"resourceType":"Observation","valueQuantity":{"value":1E-22}}"#),
            search: Some(serde_json::json!({"mode":"match"})),
            ..Default::default()
        });
        let s = b.finish();
        assert!(s.contains(
            r#""resource":{"resourceType":"Observation","valueQuantity":{"value":1E-22}}"#
        ));
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["entry"][0]["search"]["mode"], "match");
        assert_eq!(v["total"], 1);
        assert!(!BundleWriter::new("history").finish().contains("entry"));
    }
}
