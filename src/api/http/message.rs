//! Requests and answers in the protobuf JSON mapping. A request message is put
//! together from the fields the path binds, the query string and the JSON body, as
//! AIP-127 lays out; prost-reflect turns the JSON into the message (lowerCamelCase or
//! proto names, int64 as strings, enums by name, RFC 3339 times), and an answer back.

use prost::Message;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};

use crate::domain::error::{Error, FieldViolation, Result};

/// Where a method's request fields come from besides the path (`body` of its rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRule {
    /// No body: every other field comes from the query string.
    None,
    /// `body: "*"`: the whole request is the body.
    Whole,
    /// `body: "customer"`: the body is that field; the others come from the query.
    Field(String),
}

/// Well-known messages that the JSON mapping writes as one string, so a query
/// parameter can carry them.
const STRING_MESSAGES: &[&str] = &[
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.StringValue",
    "google.protobuf.Int64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.BytesValue",
];

/// The parts of an HTTP request that make the message.
pub struct Parts<'a> {
    /// Fields bound by the path, with their decoded values.
    pub bindings: &'a [(String, String)],
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// The body as sent.
    pub body: &'a [u8],
    /// Fields set by the transport (an SSE client's `Last-Event-ID`), after the rest.
    pub overrides: &'a [(String, String)],
}

/// The request message `input` that `parts` spell under `rule`, encoded. The body is
/// read straight into the message (no JSON tree of it is built); the fields of the
/// path and the query are merged over it, so the path wins.
pub fn request(input: &MessageDescriptor, rule: &BodyRule, parts: &Parts<'_>) -> Result<Vec<u8>> {
    let body = parts.body.trim_ascii();
    let mut message = match rule {
        BodyRule::None if !body.is_empty() => {
            return Err(Error::invalid(
                "body",
                "this method takes no body; send its fields in the query string",
            ));
        }
        BodyRule::Whole if !body.is_empty() => from_json(input, body)?,
        BodyRule::Field(name) if !body.is_empty() => {
            let field = input
                .get_field_by_name(name)
                .ok_or_else(|| anyhow::anyhow!("{} has no field {name}", input.name()))?;
            let Kind::Message(kind) = field.kind() else {
                return Err(anyhow::anyhow!("the body field {name} is not a message").into());
            };
            let mut message = DynamicMessage::new(input.clone());
            message.set_field(
                &field,
                prost_reflect::Value::Message(from_json(&kind, body)?),
            );
            message
        }
        _ => DynamicMessage::new(input.clone()),
    };
    let body_field = match rule {
        BodyRule::Field(name) => input.get_field_by_name(name),
        _ => None,
    };
    let mut root = Map::new();
    let mut violations = Vec::new();
    let query = parts
        .query
        .map(|q| form_urlencoded::parse(q.as_bytes()).collect::<Vec<_>>())
        .unwrap_or_default();
    for (key, value, from_query) in values(parts, &query) {
        let first = key.split('.').next().and_then(|n| field_named(input, n));
        let in_body = from_query
            && match rule {
                BodyRule::Whole => true,
                BodyRule::Field(_) => first.is_some() && first == body_field,
                BodyRule::None => false,
            };
        if in_body {
            violations.push(FieldViolation::new(
                key,
                "is sent in the body for this method, not in the query string",
            ));
            continue;
        }
        if let Err(description) = set(&mut root, input, key, value, from_query) {
            violations.push(FieldViolation::new(key, description));
        }
    }
    if !violations.is_empty() {
        return Err(Error::InvalidArgument(violations));
    }
    let given = DynamicMessage::deserialize(input.clone(), Value::Object(root)).map_err(|e| {
        // Only on failure: each value again alone, so a bad one is named by its key.
        let named: Vec<FieldViolation> = values(parts, &query)
            .filter_map(|(key, value, from_query)| {
                let mut alone = Map::new();
                set(&mut alone, input, key, value, from_query).ok()?;
                DynamicMessage::deserialize(input.clone(), Value::Object(alone))
                    .err()
                    .map(|e| FieldViolation::new(key, e.to_string()))
            })
            .collect();
        if named.is_empty() {
            Error::invalid("query", e.to_string())
        } else {
            Error::InvalidArgument(named)
        }
    })?;
    message
        .merge(given.encode_to_vec().as_slice())
        .map_err(|e| anyhow::anyhow!("merging the path and query fields: {e}"))?;
    Ok(message.encode_to_vec())
}

/// Every field value besides the body: the query's (`true`), then the path's and the
/// transport's, which win.
fn values<'a>(
    parts: &'a Parts<'_>,
    query: &'a [(std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)],
) -> impl Iterator<Item = (&'a str, &'a str, bool)> {
    query
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref(), true))
        .chain(
            parts
                .bindings
                .iter()
                .chain(parts.overrides)
                .map(|(k, v)| (k.as_str(), v.as_str(), false)),
        )
}

/// `body` read as message `kind` in the JSON mapping.
fn from_json(kind: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage> {
    let mut json = serde_json::Deserializer::from_slice(body);
    DynamicMessage::deserialize(kind.clone(), &mut json)
        .and_then(|message| json.end().map(|()| message))
        .map_err(|e| Error::invalid("body", format!("does not fit {}: {e}", kind.name())))
}

/// Sets the field at dotted `path` (proto or JSON names) of the JSON object `root`
/// for message `descriptor` to `raw`, in the JSON form its kind takes. A repeated
/// field from the query collects each value; a bound field replaces what the body
/// said. `Err` says what is wrong with the path or the value.
fn set(
    root: &mut Map<String, Value>,
    descriptor: &MessageDescriptor,
    path: &str,
    raw: &str,
    repeat: bool,
) -> Result<(), String> {
    let names: Vec<&str> = path.split('.').collect();
    let mut object = root;
    let mut message = descriptor.clone();
    for (i, name) in names.iter().enumerate() {
        let field = field_named(&message, name)
            .ok_or_else(|| format!("is not a field of {}", message.full_name()))?;
        // One key per field, its proto name, whichever name the body used.
        if field.json_name() != field.name()
            && let Some(value) = object.remove(field.json_name())
        {
            object.insert(field.name().to_owned(), value);
        }
        if i + 1 == names.len() {
            let value = scalar(&field, raw)?;
            let slot = object.entry(field.name().to_owned());
            if field.is_list() {
                let list = slot.or_insert_with(|| Value::Array(Vec::new()));
                match list {
                    Value::Array(items) if repeat => items.push(value),
                    other => *other = Value::Array(vec![value]),
                }
            } else {
                let slot = slot.or_insert(Value::Null);
                *slot = value;
            }
            return Ok(());
        }
        let Kind::Message(inner) = field.kind() else {
            return Err(format!("`{}` has no fields", field.name()));
        };
        if field.is_list() || field.is_map() {
            return Err(format!("`{}` is a list or map", field.name()));
        }
        let slot = object
            .entry(field.name().to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        object = slot.as_object_mut().expect("made an object above");
        message = inner;
    }
    Ok(())
}

fn field_named(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_name(name)
        .or_else(|| message.get_field_by_json_name(name))
}

/// `raw` as the JSON value a field of this kind takes.
fn scalar(field: &FieldDescriptor, raw: &str) -> Result<Value, String> {
    if field.is_map() {
        return Err("is a map; send it in the body".into());
    }
    match field.kind() {
        Kind::Bool => match raw {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err("must be `true` or `false`".into()),
        },
        Kind::Message(m) if STRING_MESSAGES.contains(&m.full_name()) => {
            Ok(Value::String(raw.to_owned()))
        }
        Kind::Message(m) => Err(format!(
            "is a {} message; send it in the body",
            m.full_name()
        )),
        // Numbers, enums (by name or number), strings and bytes (base64) all take a
        // string in the JSON mapping.
        _ => Ok(Value::String(raw.to_owned())),
    }
}

/// The answer `bytes` of message `output`, as JSON.
pub fn answer(output: &MessageDescriptor, bytes: &[u8]) -> Result<Vec<u8>> {
    let message = DynamicMessage::decode(output.clone(), bytes)
        .map_err(|e| anyhow::anyhow!("the answer does not decode as {}: {e}", output.name()))?;
    Ok(serde_json::to_vec(&message).map_err(|e| anyhow::anyhow!("the answer to JSON: {e}"))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn descriptor(name: &str) -> MessageDescriptor {
        crate::feed::json::message_descriptor(name)
    }

    fn parts<'a>(
        bindings: &'a [(String, String)],
        query: Option<&'a str>,
        body: &'a [u8],
    ) -> Parts<'a> {
        Parts {
            bindings,
            query,
            body,
            overrides: &[],
        }
    }

    fn violations(error: Error) -> Vec<String> {
        match error {
            Error::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn path_query_and_body_make_one_message() {
        let bindings = [("customer.name".to_owned(), "customers/c1".to_owned())];
        let bytes = request(
            &descriptor("liaison.v1.UpdateCustomerRequest"),
            &BodyRule::Field("customer".into()),
            &parts(
                &bindings,
                Some("updateMask=displayName,tags&requestId=r-1"),
                br#"{"name": "customers/other", "displayName": "Ada", "tags": ["a"]}"#,
            ),
        )
        .unwrap();
        let message = pb::UpdateCustomerRequest::decode(bytes.as_slice()).unwrap();
        let customer = message.customer.unwrap();
        assert_eq!(customer.name, "customers/c1", "the path wins over the body");
        assert_eq!(customer.display_name, "Ada");
        assert_eq!(
            message.update_mask.unwrap().paths,
            vec!["display_name", "tags"]
        );

        let bytes = request(
            &descriptor("liaison.v1.ListCustomersRequest"),
            &BodyRule::None,
            &parts(
                &[],
                Some("page_size=5&showDeleted=true&filter=a%20%3D%201"),
                b"",
            ),
        )
        .unwrap();
        let message = pb::ListCustomersRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            (
                message.page_size,
                message.show_deleted,
                message.filter.as_str()
            ),
            (5, true, "a = 1")
        );

        let bytes = request(
            &descriptor("liaison.v1.WatchEventsRequest"),
            &BodyRule::None,
            &Parts {
                bindings: &[],
                query: Some("eventTypes=customer.*&eventTypes=case.*&afterSequence=3"),
                body: b"",
                overrides: &[("after_sequence".into(), "42".into())],
            },
        )
        .unwrap();
        let message = pb::WatchEventsRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(message.event_types, vec!["customer.*", "case.*"]);
        assert_eq!(message.after_sequence, 42, "the transport's value wins");
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        let list = descriptor("liaison.v1.ListCustomersRequest");
        let error = request(
            &list,
            &BodyRule::None,
            &parts(&[], Some("pageSize=5&nope=1&showDeleted=yes"), b""),
        )
        .unwrap_err();
        assert_eq!(violations(error), vec!["nope", "showDeleted"]);
        let error = request(&list, &BodyRule::None, &parts(&[], None, b"{}")).unwrap_err();
        assert_eq!(violations(error), vec!["body"]);
        let error =
            request(&list, &BodyRule::None, &parts(&[], Some("pageSize=x"), b"")).unwrap_err();
        assert_eq!(violations(error), vec!["pageSize"], "named by its own key");

        let create = descriptor("liaison.v1.CreateCustomerRequest");
        let rule = BodyRule::Field("customer".into());
        for body in [
            &b"{not json"[..],
            br#"{"displayName": 3}"#,
            br#"{"unknown": 1}"#,
        ] {
            let error = request(&create, &rule, &parts(&[], None, body)).unwrap_err();
            assert_eq!(
                violations(error),
                vec!["body"],
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let error = request(
            &create,
            &rule,
            &parts(&[], Some("customer.displayName=x"), b"{}"),
        )
        .unwrap_err();
        assert_eq!(violations(error), vec!["customer.displayName"]);
        let error = request(&create, &BodyRule::Whole, &parts(&[], None, b"[1]")).unwrap_err();
        assert_eq!(violations(error), vec!["body"]);
    }

    #[test]
    fn answers_follow_the_json_mapping() {
        let customer = pb::Customer {
            name: "customers/c1".into(),
            display_name: "Ada".into(),
            etag: "7".into(),
            ..Default::default()
        };
        let json: Value = serde_json::from_slice(
            &answer(
                &descriptor("liaison.v1.Customer"),
                &customer.encode_to_vec(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(json["name"], "customers/c1");
        assert_eq!(json["displayName"], "Ada");
    }
}
