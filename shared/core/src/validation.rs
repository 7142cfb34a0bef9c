//! Validation of every client-supplied field, in one place. Problems are collected per field so
//! the API can list them all in `details`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::time::parse_timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Bounds on every agent field.
pub mod limits {
    pub const NAME_CHARS: usize = 128;
    pub const DESCRIPTION_CHARS: usize = 1024;
    pub const OWNER_CHARS: usize = 256;
    pub const LIST_ITEMS: usize = 50;
    pub const LIST_ITEM_CHARS: usize = 128;
    pub const METADATA_ENTRIES: usize = 50;
    pub const METADATA_KEY_CHARS: usize = 64;
    pub const METADATA_VALUE_CHARS: usize = 1024;
    /// A resource identifier (an absolute URI), in bytes, which are its characters: it is ASCII.
    pub const IDENTIFIER_CHARS: usize = 512;
    pub const PAGE_LIMIT_MAX: u32 = 100;
    pub const AUDIT_LIMIT_MAX: usize = 200;
}

/// Invisible and direction-changing characters let two names look alike or hide text; names
/// and other display fields refuse them, as they refuse control characters.
fn is_deceptive(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}'
            | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFF}'
            | '\u{E0000}'..='\u{E007F}')
}

/// Checks a display string: not blank, within `max_chars`, no control or invisible characters.
pub fn check_text(field: &str, value: &str, max_chars: usize, errors: &mut Vec<FieldError>) {
    if value.trim().is_empty() {
        errors.push(FieldError::new(field, "must not be empty"));
    } else if value.chars().count() > max_chars {
        errors.push(FieldError::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    } else if value.chars().any(is_deceptive) {
        errors.push(FieldError::new(
            field,
            "must not contain control or invisible characters",
        ));
    } else if value.trim() != value {
        errors.push(FieldError::new(
            field,
            "must not start or end with white space",
        ));
    }
}

/// A scope token per RFC 6749 §3.3: printable ASCII other than space, `"` and `\`.
pub fn is_scope_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// A JSON object being read field by field. Every field read is remembered, so `finish`
/// reports the ones the endpoint does not know.
pub struct JsonObject {
    fields: Map<String, Value>,
    known: Vec<&'static str>,
    pub errors: Vec<FieldError>,
}

#[derive(Debug)]
pub enum BodyError {
    /// Not JSON at all, or not an object: one problem for the whole body.
    NotJson(String),
    Fields(Vec<FieldError>),
}

impl JsonObject {
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        let text = if body.iter().all(u8::is_ascii_whitespace) {
            "{}".as_bytes()
        } else {
            body
        };
        let value: Value = serde_json::from_slice(text)
            .map_err(|e| BodyError::NotJson(format!("the body is not valid JSON: {e}")))?;
        match value {
            Value::Object(fields) => Ok(Self {
                fields,
                known: Vec::new(),
                errors: Vec::new(),
            }),
            _ => Err(BodyError::NotJson("the body must be a JSON object".into())),
        }
    }

    pub fn is_present(&self, field: &str) -> bool {
        self.fields.contains_key(field)
    }

    /// A field's JSON as sent, for a caller that validates its shape itself.
    pub fn value(&mut self, field: &'static str) -> Option<Value> {
        self.take(field)
    }

    fn take(&mut self, field: &'static str) -> Option<Value> {
        self.known.push(field);
        self.fields.get(field).cloned()
    }

    /// `Some(None)` when the field is present and null: PATCH uses that to clear a field.
    pub fn optional_text(
        &mut self,
        field: &'static str,
        max_chars: usize,
    ) -> Option<Option<String>> {
        match self.take(field)? {
            Value::Null => Some(None),
            Value::String(s) => {
                check_text(field, &s, max_chars, &mut self.errors);
                Some(Some(s))
            }
            _ => {
                self.errors.push(FieldError::new(field, "must be a string"));
                None
            }
        }
    }

    /// A boolean field; `None` when absent or refused (null included: a flag is never cleared).
    pub fn optional_bool(&mut self, field: &'static str) -> Option<bool> {
        match self.take(field)? {
            Value::Bool(value) => Some(value),
            _ => {
                self.errors
                    .push(FieldError::new(field, "must be true or false"));
                None
            }
        }
    }

    pub fn required_text(&mut self, field: &'static str, max_chars: usize) -> Option<String> {
        match self.optional_text(field, max_chars) {
            Some(Some(s)) => Some(s),
            Some(None) | None if !self.errors.iter().any(|e| e.field == field) => {
                self.errors.push(FieldError::new(field, "is required"));
                None
            }
            _ => None,
        }
    }

    /// A list of distinct strings, each checked by `check`.
    pub fn string_list(
        &mut self,
        field: &'static str,
        check: impl Fn(&str) -> Option<String>,
    ) -> Option<Vec<String>> {
        match self.take(field)? {
            Value::Array(items) => {
                if items.len() > limits::LIST_ITEMS {
                    self.errors.push(FieldError::new(
                        field,
                        format!("must have at most {} items", limits::LIST_ITEMS),
                    ));
                    return None;
                }
                let mut out: Vec<String> = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let name = format!("{field}[{i}]");
                    match item {
                        Value::String(s) => {
                            if let Some(problem) = check(&s) {
                                self.errors.push(FieldError::new(name, problem));
                            } else if out.contains(&s) {
                                self.errors.push(FieldError::new(name, "is a duplicate"));
                            } else {
                                out.push(s);
                            }
                        }
                        _ => self.errors.push(FieldError::new(name, "must be a string")),
                    }
                }
                Some(out)
            }
            Value::Null => Some(Vec::new()),
            _ => {
                self.errors
                    .push(FieldError::new(field, "must be an array of strings"));
                None
            }
        }
    }

    pub fn string_map(&mut self, field: &'static str) -> Option<BTreeMap<String, String>> {
        match self.take(field)? {
            Value::Object(entries) => {
                if entries.len() > limits::METADATA_ENTRIES {
                    self.errors.push(FieldError::new(
                        field,
                        format!("must have at most {} entries", limits::METADATA_ENTRIES),
                    ));
                    return None;
                }
                let mut out = BTreeMap::new();
                for (key, value) in entries {
                    let name = format!("{field}.{key}");
                    let before = self.errors.len();
                    check_text(&name, &key, limits::METADATA_KEY_CHARS, &mut self.errors);
                    match value {
                        Value::String(v)
                            if v.chars().count() <= limits::METADATA_VALUE_CHARS
                                && !v.chars().any(is_deceptive) =>
                        {
                            if self.errors.len() == before {
                                out.insert(key, v);
                            }
                        }
                        Value::String(_) => self.errors.push(FieldError::new(
                            name,
                            format!(
                                "must be at most {} characters, without control characters",
                                limits::METADATA_VALUE_CHARS
                            ),
                        )),
                        _ => self.errors.push(FieldError::new(name, "must be a string")),
                    }
                }
                Some(out)
            }
            Value::Null => Some(BTreeMap::new()),
            _ => {
                self.errors
                    .push(FieldError::new(field, "must be an object of strings"));
                None
            }
        }
    }

    /// An RFC 3339 timestamp, or null.
    pub fn optional_timestamp(&mut self, field: &'static str) -> Option<DateTime<Utc>> {
        match self.take(field)? {
            Value::Null => None,
            Value::String(s) => match parse_timestamp(&s) {
                Some(at) => Some(at),
                None => {
                    self.errors.push(FieldError::new(
                        field,
                        "must be an RFC 3339 timestamp, e.g. 2027-03-28T00:00:00.000Z",
                    ));
                    None
                }
            },
            _ => {
                self.errors.push(FieldError::new(field, "must be a string"));
                None
            }
        }
    }

    /// Reports unknown fields and returns every problem found, if any.
    pub fn finish(mut self) -> Result<(), Vec<FieldError>> {
        let mut unknown: Vec<&String> = self
            .fields
            .keys()
            .filter(|k| !self.known.contains(&k.as_str()))
            .collect();
        unknown.sort();
        for field in unknown {
            self.errors
                .push(FieldError::new(field.clone(), "is not a known field"));
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

pub fn check_capability(value: &str) -> Option<String> {
    let mut errors = Vec::new();
    check_text("", value, limits::LIST_ITEM_CHARS, &mut errors);
    errors.pop().map(|e| e.message)
}

pub fn check_scope(value: &str) -> Option<String> {
    if value.len() > limits::LIST_ITEM_CHARS {
        Some(format!(
            "must be at most {} characters",
            limits::LIST_ITEM_CHARS
        ))
    } else if !is_scope_token(value) {
        Some("must be a scope token: printable ASCII without spaces, quotes or backslashes".into())
    } else {
        None
    }
}

/// A scope a resource may list: a scope token, but never a management scope, which only the
/// management API's own audience may carry.
pub fn check_resource_scope(value: &str) -> Option<String> {
    check_scope(value).or_else(|| {
        crate::domain::Scope::parse(value).map(|_| {
            format!(
                "{value} is a management scope, which only this IdP's management API accepts; \
                 a resource cannot list it"
            )
        })
    })
}

/// A character RFC 3986 allows in a URI: unreserved, reserved, or `%` of a percent-encoding.
fn is_uri_character(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b)
}

/// Whether every `%` starts a percent-encoding (`%` and two hex digits).
fn percent_encodings_are_whole(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(name) => *name == "localhost",
        url::Host::Ipv4(address) => address.is_loopback(),
        url::Host::Ipv6(address) => address.is_loopback(),
    }
}

/// A resource identifier (RFC 8707 §2), normalised: an absolute `https` URI, or `http` on a
/// loopback host (`localhost`, 127.0.0.0/8, `[::1]`) for local development; no fragment, no
/// user information, ASCII, at most [`limits::IDENTIFIER_CHARS`]. The normalised form is the
/// text as given with its scheme and host lowercased (RFC 3986 §6.2.2.1: they are
/// case-insensitive), and nothing else: a resource server compares a token's `aud` with its
/// own URL as a string, so a trailing slash, an explicit default port or a path's dot segments
/// make another identifier. The host (and port) must be written as the URL parser writes them
/// back, so that no other spelling of an address (`0x7f.1`, `%6c%6f...`, a port with a leading
/// zero) passes for it. The error is the problem, for the field the caller names.
pub fn resource_identifier(text: &str) -> Result<String, &'static str> {
    const ABSOLUTE: &str =
        "must be an absolute URI with a host, such as https://mcp.example.com/mcp";
    if text.len() > limits::IDENTIFIER_CHARS {
        return Err("must be at most 512 characters");
    }
    if !text.bytes().all(is_uri_character) || !percent_encodings_are_whole(text) {
        return Err("must be a URI: ASCII, no spaces, other characters percent-encoded (RFC 3986)");
    }
    if text.contains('#') {
        return Err("must not have a fragment (RFC 8707 §2)");
    }
    let (scheme, rest) = text.split_once("://").ok_or(ABSOLUTE)?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err("must not have user information");
    }
    let parsed = url::Url::parse(text).map_err(|_| ABSOLUTE)?;
    let scheme = scheme.to_ascii_lowercase();
    let host = parsed.host().ok_or(ABSOLUTE)?;
    match scheme.as_str() {
        "https" => {}
        "http" if is_loopback(&host) => {}
        _ => {
            return Err(
                "must use https, or http on a loopback host (localhost, 127.0.0.0/8, [::1])",
            );
        }
    }
    let authority = authority.to_ascii_lowercase();
    let written_host = parsed.host_str().unwrap_or_default();
    let canonical = match parsed.port() {
        Some(port) => format!("{written_host}:{port}"),
        None => written_host.to_owned(),
    };
    let default_port = parsed
        .port_or_known_default()
        .map(|port| format!("{written_host}:{port}"));
    if authority != canonical && Some(&authority) != default_port.as_ref() {
        return Err(
            "must write its host and port in canonical form (lowercase name, dotted IPv4, \
             compressed IPv6 in brackets, port without leading zeros)",
        );
    }
    Ok(format!("{scheme}://{authority}{path_and_query}"))
}

/// Path ids: anything that is not a UUID is answered as not found.
pub fn parse_id(text: &str) -> Option<Uuid> {
    if text.len() != 36 {
        return None;
    }
    Uuid::parse_str(text).ok()
}

/// Query parameters, each allowed once.
pub struct QueryParams {
    pairs: Vec<(String, String)>,
    known: Vec<&'static str>,
    pub errors: Vec<FieldError>,
}

impl QueryParams {
    pub fn parse(query: &str) -> Self {
        let pairs = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Self {
            pairs,
            known: Vec::new(),
            errors: Vec::new(),
        }
    }

    pub fn get(&mut self, name: &'static str) -> Option<String> {
        self.known.push(name);
        let mut values = self
            .pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone());
        let first = values.next();
        if values.next().is_some() {
            self.errors
                .push(FieldError::new(name, "must be given at most once"));
            return None;
        }
        first
    }

    /// A whole number in `min..=max`, or `default` when absent.
    pub fn number(&mut self, name: &'static str, default: u32, min: u32, max: u32) -> u32 {
        match self.get(name) {
            None => default,
            Some(text) => match text.parse::<u32>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ => {
                    self.errors.push(FieldError::new(
                        name,
                        format!("must be a whole number from {min} to {max}"),
                    ));
                    default
                }
            },
        }
    }

    pub fn finish(mut self) -> Result<(), Vec<FieldError>> {
        let mut unknown: Vec<String> = self
            .pairs
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !self.known.contains(&k.as_str()))
            .collect();
        unknown.sort();
        unknown.dedup();
        for name in unknown {
            self.errors
                .push(FieldError::new(name, "is not a known query parameter"));
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_reported_by_name() {
        let mut body = JsonObject::parse(br#"{"name":"a","colour":"red"}"#).unwrap();
        body.required_text("name", 10);
        assert_eq!(
            body.finish().unwrap_err(),
            vec![FieldError::new("colour", "is not a known field")]
        );
    }

    #[test]
    fn a_missing_required_field_is_reported_once() {
        let mut body = JsonObject::parse(b"{}").unwrap();
        assert_eq!(body.required_text("name", 10), None);
        assert_eq!(
            body.finish().unwrap_err(),
            vec![FieldError::new("name", "is required")]
        );
    }

    #[test]
    fn a_wrong_type_is_reported_not_required() {
        let mut body = JsonObject::parse(br#"{"name":5}"#).unwrap();
        body.required_text("name", 10);
        assert_eq!(
            body.finish().unwrap_err(),
            vec![FieldError::new("name", "must be a string")]
        );
    }

    #[test]
    fn names_with_invisible_or_control_characters_are_refused() {
        for bad in ["a\u{200B}b", "a\u{202E}b", "a\nb", "\u{FEFF}a", "a\u{0000}"] {
            let mut errors = Vec::new();
            check_text("name", bad, 100, &mut errors);
            assert_eq!(errors.len(), 1, "{bad:?}");
        }
    }

    #[test]
    fn names_in_other_scripts_and_with_emoji_are_accepted() {
        for good in ["Agent Ω", "請求ボット", "bot 🤖", "Zoë"] {
            let mut errors = Vec::new();
            check_text("name", good, 100, &mut errors);
            assert!(errors.is_empty(), "{good:?}: {errors:?}");
        }
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        let mut errors = Vec::new();
        check_text("name", &"é".repeat(128), 128, &mut errors);
        assert!(errors.is_empty());
        check_text("name", &"é".repeat(129), 128, &mut errors);
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn scope_tokens_follow_rfc_6749() {
        assert!(is_scope_token("weather:read"));
        assert!(!is_scope_token("a b"));
        assert!(!is_scope_token("a\"b"));
        assert!(!is_scope_token("a\\b"));
        assert!(!is_scope_token("é"));
        assert!(!is_scope_token(""));
    }

    #[test]
    fn duplicate_list_items_are_refused() {
        let mut body = JsonObject::parse(br#"{"scopes":["a","a"]}"#).unwrap();
        body.string_list("scopes", check_scope);
        assert_eq!(body.finish().unwrap_err()[0].field, "scopes[1]");
    }

    #[test]
    fn repeated_and_unknown_query_parameters_are_refused() {
        let mut query = QueryParams::parse("page=1&page=2&x=1");
        query.get("page");
        let errors = query.finish().unwrap_err();
        assert_eq!(
            errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            ["page", "x"]
        );
    }

    #[test]
    fn numbers_outside_their_range_are_refused() {
        for bad in ["0", "-1", "101", "ten", "99999999999"] {
            let mut query = QueryParams::parse(&format!("limit={bad}"));
            query.number("limit", 20, 1, 100);
            assert!(query.finish().is_err(), "{bad}");
        }
    }

    #[test]
    fn resource_identifiers_keep_their_text_but_lowercase_scheme_and_host() {
        for (given, normalised) in [
            ("https://mcp.example.com/mcp", "https://mcp.example.com/mcp"),
            (
                "HTTPS://MCP.Example.COM/Path/A",
                "https://mcp.example.com/Path/A",
            ),
            ("https://api.example.com", "https://api.example.com"),
            ("https://api.example.com/", "https://api.example.com/"),
            (
                "https://api.example.com:443/x",
                "https://api.example.com:443/x",
            ),
            (
                "https://api.example.com:8443/x?tenant=A",
                "https://api.example.com:8443/x?tenant=A",
            ),
            (
                "https://api.example.com/a/../b",
                "https://api.example.com/a/../b",
            ),
            (
                "https://api.example.com/%7Euser",
                "https://api.example.com/%7Euser",
            ),
            ("http://localhost:8000/mcp", "http://localhost:8000/mcp"),
            ("http://LOCALHOST/mcp", "http://localhost/mcp"),
            ("http://127.0.0.1:9/mcp", "http://127.0.0.1:9/mcp"),
            ("http://127.3.2.1/", "http://127.3.2.1/"),
            ("http://[::1]:8000/", "http://[::1]:8000/"),
            ("https://[2001:db8::1]/", "https://[2001:db8::1]/"),
            (
                "https://xn--bcher-kva.example/",
                "https://xn--bcher-kva.example/",
            ),
        ] {
            assert_eq!(
                resource_identifier(given),
                Ok(normalised.to_owned()),
                "{given}"
            );
        }
    }

    #[test]
    fn resource_identifiers_that_rfc_8707_or_this_idp_refuses_are_refused() {
        let long = format!("https://api.example.com/{}", "a".repeat(500));
        for bad in [
            "",
            "/relative/path",
            "api.example.com/mcp",
            "//api.example.com/mcp",
            "urn:example:resource",
            "mailto:ops@example.com",
            "https://api.example.com/mcp#section",
            "https://api.example.com/#",
            "https://user:pass@api.example.com/",
            "https://@api.example.com/",
            "http://api.example.com/mcp",
            "http://localhost.example.com/",
            "http://128.0.0.1/",
            "http://[::2]/",
            "ftp://api.example.com/",
            "https:///path",
            "https://",
            "https://api.example.com/a b",
            "https://api.example.com/\u{e9}",
            "https://bücher.example/",
            "https://api.example.com/%zz",
            "https://api.example.com/%4",
            "http://0x7f.0.0.1/",
            "http://2130706433/",
            "https://api.example.com:0443/",
            "https://api.example.com:/",
            "https://api.example.com:99999/",
            "https://[0:0:0:0:0:0:0:1]/",
            "https://api%2Eexample.com/",
            "https://api.example.com\\@evil.example/",
            long.as_str(),
        ] {
            assert!(resource_identifier(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_resource_cannot_list_a_management_scope() {
        for scope in crate::domain::scope::MANAGEMENT_SCOPES {
            assert!(check_resource_scope(scope).unwrap().contains(scope));
        }
        assert_eq!(check_resource_scope("tools:call"), None);
        assert!(check_resource_scope("has space").is_some());
    }

    #[test]
    fn path_ids_must_be_canonical_uuids() {
        assert!(parse_id("c9d8e7f6-a5b4-3210-fedc-ba9876543210").is_some());
        assert!(parse_id("c9d8e7f6a5b43210fedcba9876543210").is_none());
        assert!(parse_id("not-a-uuid").is_none());
    }

    #[test]
    fn an_empty_body_reads_as_an_empty_object() {
        assert!(JsonObject::parse(b"").unwrap().finish().is_ok());
        assert!(matches!(
            JsonObject::parse(b"[]"),
            Err(BodyError::NotJson(_))
        ));
        assert!(matches!(
            JsonObject::parse(b"{"),
            Err(BodyError::NotJson(_))
        ));
    }
}
