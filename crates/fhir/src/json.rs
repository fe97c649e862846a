//! Reading a resource body.

use serde_json::value::RawValue;
use serde_json::Value;

/// Why a body is not a usable FHIR JSON resource.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    /// The bytes are not JSON; position is 1-based.
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's explanation.
        message: String,
    },
    /// The JSON is not an object.
    #[error("the body must be a JSON object (a FHIR resource)")]
    NotAnObject,
    /// The object has no `resourceType` string.
    #[error("the resource has no resourceType")]
    MissingResourceType,
}

/// Parses a request body into a resource object. A UTF-8 BOM before the JSON is tolerated
/// (some EHR exports write one); anything else that is not a JSON object is an error.
pub fn parse_resource(bytes: &[u8]) -> Result<Value, BodyError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let v: Value = serde_json::from_slice(bytes).map_err(|e| BodyError::Malformed {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    match &v {
        Value::Object(m) => match m.get("resourceType") {
            Some(Value::String(_)) => Ok(v),
            _ => Err(BodyError::MissingResourceType),
        },
        _ => Err(BodyError::NotAnObject),
    }
}

/// A resource as received, kept as its top-level members with their JSON text untouched, so that
/// storing it changes nothing but what the server must set (`id`, `meta`): `1.50` stays `1.50`
/// and `1E-22` stays `1E-22`.
#[derive(Debug, Clone)]
pub struct RawResource {
    members: Vec<(String, Box<RawValue>)>,
}

struct MembersVisitor;

impl<'de> serde::de::Visitor<'de> for MembersVisitor {
    type Value = Vec<(String, Box<RawValue>)>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
            let v = match minified(v.get()) {
                Some(text) => RawValue::from_string(text).map_err(serde::de::Error::custom)?,
                None => v,
            };
            out.push((k, v));
        }
        Ok(out)
    }
}

/// The JSON text without insignificant whitespace, or `None` if it has none. Number and string
/// text is copied unchanged.
fn minified(text: &str) -> Option<String> {
    let mut in_string = false;
    let mut escaped = false;
    let needs = text.bytes().any(|b| {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            false
        } else {
            if b == b'"' {
                in_string = true;
            }
            matches!(b, b' ' | b'\n' | b'\r' | b'\t')
        }
    });
    if !needs {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            out.push(c);
        }
    }
    Some(out)
}

impl RawResource {
    /// Splits a resource object (already checked by [`parse_resource`]) into its members.
    pub fn parse(bytes: &[u8]) -> Result<Self, BodyError> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let members =
            serde::Deserializer::deserialize_map(&mut de, MembersVisitor).map_err(|e| {
                BodyError::Malformed {
                    line: e.line(),
                    column: e.column(),
                    message: e.to_string(),
                }
            })?;
        Ok(Self { members })
    }

    /// Builds a raw resource from a parsed value (for resources the server itself builds or rewrites).
    pub fn from_value(v: &Value) -> Self {
        let members = match v {
            Value::Object(m) => m
                .iter()
                .filter_map(|(k, v)| {
                    serde_json::value::to_raw_value(v)
                        .ok()
                        .map(|r| (k.clone(), r))
                })
                .collect(),
            _ => Vec::new(),
        };
        Self { members }
    }

    /// Sets (or replaces, keeping its position) a top-level member. `id` goes right after
    /// `resourceType` when new, `meta` after `id`, as the specification's examples order them.
    pub fn set(&mut self, key: &str, value: &Value) {
        let raw = match serde_json::value::to_raw_value(value) {
            Ok(r) => r,
            Err(_) => return,
        };
        if let Some(slot) = self.members.iter_mut().find(|(k, _)| k == key) {
            slot.1 = raw;
            return;
        }
        let after = match key {
            "id" => Some("resourceType"),
            "meta" => Some("id"),
            _ => None,
        };
        let pos = after
            .and_then(|a| self.members.iter().position(|(k, _)| k == a))
            .map(|p| p + 1)
            .unwrap_or(self.members.len());
        self.members.insert(pos, (key.to_string(), raw));
    }

    /// Removes a top-level member.
    pub fn remove(&mut self, key: &str) {
        self.members.retain(|(k, _)| k != key);
    }

    /// A top-level member as a parsed value.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| serde_json::from_str(v.get()).ok())
    }

    /// Applies `f` to every top-level member whose text contains `needle`, re-serialising only
    /// the members `f` reports as changed.
    pub fn rewrite_members(&mut self, needle: &str, f: &mut dyn FnMut(&mut Value) -> bool) {
        for (_, raw) in self.members.iter_mut() {
            if !raw.get().contains(needle) {
                continue;
            }
            if let Ok(mut v) = serde_json::from_str::<Value>(raw.get()) {
                if f(&mut v) {
                    if let Ok(r) = serde_json::value::to_raw_value(&v) {
                        *raw = r;
                    }
                }
            }
        }
    }

    /// The resource as JSON text with one member replaced (or added, at the place [`Self::set`]
    /// would put it), without copying the others first.
    pub fn to_json_string_with(&self, key: &str, value: &Value) -> String {
        let replacement = value.to_string();
        let mut out = String::with_capacity(
            self.members
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>()
                + replacement.len()
                + key.len()
                + 6,
        );
        let present = self.members.iter().any(|(k, _)| k == key);
        let after = match key {
            "id" => "resourceType",
            "meta" => "id",
            _ => "",
        };
        let insert_at = if present {
            None
        } else {
            Some(
                self.members
                    .iter()
                    .position(|(k, _)| k == after)
                    .map_or(self.members.len(), |p| p + 1),
            )
        };
        let mut first = true;
        let mut push = |out: &mut String, k: &str, v: &str| {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&serde_json::to_string(k).unwrap_or_default());
            out.push(':');
            out.push_str(v);
        };
        out.push('{');
        for (i, (k, v)) in self.members.iter().enumerate() {
            if insert_at == Some(i) {
                push(&mut out, key, &replacement);
            }
            if k == key {
                push(&mut out, k, &replacement);
            } else {
                push(&mut out, k, v.get());
            }
        }
        if insert_at == Some(self.members.len()) {
            push(&mut out, key, &replacement);
        }
        out.push('}');
        out
    }

    /// The resource as JSON text, members in their original order and spelling.
    pub fn to_json_string(&self) -> String {
        let mut out = String::with_capacity(
            self.members
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>()
                + 2,
        );
        out.push('{');
        for (i, (k, v)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(k).unwrap_or_default());
            out.push(':');
            out.push_str(v.get());
        }
        out.push('}');
        out
    }
}

/// `_elements` and `_summary=data`: the resource reduced to the named top-level elements
/// (plus `resourceType`, `id` and `meta`), or without its narrative, tagged `SUBSETTED` as the
/// specification asks. Text that is not a resource object is returned unchanged.
pub fn subset(text: &str, elements: Option<&[String]>, drop_narrative: bool) -> String {
    let Ok(mut raw) = RawResource::parse(text.as_bytes()) else {
        return text.to_string();
    };
    if let Some(keep) = elements {
        raw.members.retain(|(k, _)| {
            matches!(k.as_str(), "resourceType" | "id" | "meta") || keep.iter().any(|e| e == k)
        });
    }
    if drop_narrative {
        raw.remove("text");
    }
    let mut meta = raw
        .get("meta")
        .filter(Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    let tag = serde_json::json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"});
    match meta.get_mut("tag").and_then(Value::as_array_mut) {
        Some(tags) => tags.push(tag),
        None => meta["tag"] = serde_json::json!([tag]),
    }
    raw.set("meta", &meta);
    raw.to_json_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_decimal_text_and_order() {
        let text = br#"{"resourceType":"Observation", "valueQuantity":{"value":1.50},"a":1E-22,"meta":{"tag":[{"code":"t"}]}}"#;
        let mut r = RawResource::parse(text).unwrap();
        r.set("id", &serde_json::json!("o1"));
        let mut meta = r.get("meta").unwrap();
        meta["versionId"] = serde_json::json!("1");
        r.set("meta", &meta);
        assert_eq!(
            r.to_json_string(),
            r#"{"resourceType":"Observation","id":"o1","valueQuantity":{"value":1.50},"a":1E-22,"meta":{"tag":[{"code":"t"}],"versionId":"1"}}"#
        );
        let pretty = "{\"resourceType\": \"Patient\",\n  \"name\": [ {\"text\": \"a \\\" b  c\"} ],\n \"x\": 1.0E+2 }";
        assert_eq!(
            RawResource::parse(pretty.as_bytes())
                .unwrap()
                .to_json_string(),
            r#"{"resourceType":"Patient","name":[{"text":"a \" b  c"}],"x":1.0E+2}"#
        );
        let v = parse_resource(text).unwrap();
        assert_eq!(v["valueQuantity"]["value"].to_string(), "1.50");
        let mut no_meta =
            RawResource::parse(br#"{"resourceType":"Patient","id":"p","active":true}"#).unwrap();
        assert_eq!(
            no_meta.to_json_string_with("meta", &serde_json::json!({"versionId":"1"})),
            r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"1"},"active":true}"#
        );
        no_meta.remove("id");
        assert_eq!(
            no_meta.to_json_string_with("meta", &serde_json::json!({})),
            r#"{"resourceType":"Patient","active":true,"meta":{}}"#
        );
    }

    #[test]
    fn subsets() {
        let t = r#"{"resourceType":"Observation","id":"o","meta":{"versionId":"1"},"text":{"div":"x"},"status":"final","code":{"text":"c"},"valueQuantity":{"value":1.50}}"#;
        let s = subset(
            t,
            Some(&["status".to_string(), "valueQuantity".to_string()]),
            false,
        );
        assert_eq!(
            s,
            r#"{"resourceType":"Observation","id":"o","meta":{"versionId":"1","tag":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED"}]},"status":"final","valueQuantity":{"value":1.50}}"#
        );
        assert!(!subset(t, None, true).contains(r#""text":{"div""#));
    }

    #[test]
    fn errors_have_positions() {
        match parse_resource(b"{\n  \"resourceType\": ") {
            Err(BodyError::Malformed { line, column, .. }) => {
                assert_eq!(line, 2);
                assert!(column > 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_resource(b"[1]"), Err(BodyError::NotAnObject));
        assert_eq!(parse_resource(b"{}"), Err(BodyError::MissingResourceType));
        assert!(parse_resource(b"\xEF\xBB\xBF{\"resourceType\":\"Patient\"}").is_ok());
    }
}
