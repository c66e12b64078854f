//! The OpenAPI 3.1 description of the HTTP/JSON API, made from the protos: the paths
//! from their `google.api.http` rules, the schemas from the messages' JSON mapping,
//! the words from their comments. `build.rs` compiles this file too and writes the
//! document at build time (the hub serves that copy at `/openapi.json`), so it
//! depends on nothing but prost-reflect, serde_json and the template parser.

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};
use serde_json::{Map, Value, json};

use super::template::Template;

/// The packages whose services are served over HTTP/JSON.
pub const SERVED_PACKAGES: &[&str] = &["liaison.v1"];
/// Services served from other packages.
pub const SERVED_SERVICES: &[&str] = &["google.longrunning.Operations"];
/// The stream whose messages are sent as Server-Sent Events.
pub const EVENT_STREAM: &str = "liaison.v1.WatchEventsResponse";

/// Rules for served methods of vendored protos that carry none (the files stay as
/// upstream publishes them): the path Google's own APIs give `WaitOperation`.
const RULES_ADDED: &[(&str, &str, &str, &str)] = &[(
    "google.longrunning.Operations.WaitOperation",
    "POST",
    "/v1/{name=operations/**}:wait",
    "*",
)];

/// One HTTP binding as a `google.api.http` rule (or one of its
/// `additional_bindings`) spells it.
pub struct Rule {
    /// `GET`, `POST`, … (or a custom rule's kind).
    pub method: String,
    /// The path template, `/v1/{name=customers/*}`.
    pub path: String,
    /// `""`, `"*"`, or the request field that is the body.
    pub body: String,
}

/// The methods served over HTTP, in the pool's order.
pub fn served(pool: &DescriptorPool) -> Vec<MethodDescriptor> {
    pool.services()
        .filter(|s| {
            SERVED_PACKAGES.contains(&s.package_name()) || SERVED_SERVICES.contains(&s.full_name())
        })
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .collect()
}

/// The HTTP rules of `method`; `Err` when it has none or one has no path.
pub fn rules(pool: &DescriptorPool, method: &MethodDescriptor) -> Result<Vec<Rule>, String> {
    let Some(extension) = pool.get_extension_by_name("google.api.http") else {
        return Err("the descriptors do not define google.api.http".into());
    };
    let options = method.options();
    if !options.has_extension(&extension) {
        if let Some((_, verb, path, body)) = RULES_ADDED
            .iter()
            .find(|(name, ..)| *name == method.full_name())
        {
            return Ok(vec![Rule {
                method: (*verb).to_owned(),
                path: (*path).to_owned(),
                body: (*body).to_owned(),
            }]);
        }
        return Err(format!(
            "{} has no google.api.http rule",
            method.full_name()
        ));
    }
    let prost_reflect::Value::Message(rule) = options.get_extension(&extension).into_owned() else {
        return Err(format!(
            "{}: google.api.http is not a message",
            method.full_name()
        ));
    };
    let mut found = vec![read_rule(&rule, method)?];
    if let Some(extra) = rule.get_field_by_name("additional_bindings")
        && let Some(list) = extra.as_list()
    {
        for binding in list {
            if let Some(binding) = binding.as_message() {
                found.push(read_rule(binding, method)?);
            }
        }
    }
    Ok(found)
}

fn read_rule(
    rule: &prost_reflect::DynamicMessage,
    method: &MethodDescriptor,
) -> Result<Rule, String> {
    let text = |m: &prost_reflect::DynamicMessage, name: &str| {
        m.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let body = text(rule, "body");
    for verb in ["get", "put", "post", "delete", "patch"] {
        if rule.has_field_by_name(verb) {
            return Ok(Rule {
                method: verb.to_uppercase(),
                path: text(rule, verb),
                body,
            });
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(custom) = rule.get_field_by_name("custom")
        && let Some(custom) = custom.as_message()
    {
        return Ok(Rule {
            method: text(custom, "kind"),
            path: text(custom, "path"),
            body,
        });
    }
    Err(format!(
        "{}: a google.api.http rule without a path",
        method.full_name()
    ))
}

/// The comment written above the element at `path` in its file, trimmed.
fn comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|l| l.path == path)?;
    let text = location.leading_comments.as_deref()?.trim();
    (!text.is_empty()).then(|| text.lines().map(str::trim).collect::<Vec<_>>().join("\n"))
}

/// Messages the JSON mapping writes as something other than an object.
fn well_known(name: &str) -> Option<Value> {
    Some(match name {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "description": "seconds with an `s`: `3.5s`"})
        }
        "google.protobuf.FieldMask" => {
            json!({"type": "string", "description": "field paths joined by commas: `displayName,tags`"})
        }
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": {"@type": {"type": "string"}},
            "required": ["@type"],
            "additionalProperties": true
        }),
        "google.protobuf.StringValue" => json!({"type": "string"}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => {
            json!({"type": "integer"})
        }
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({"type": "string", "format": "int64"})
        }
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => {
            json!({"type": "number"})
        }
        "google.protobuf.BytesValue" => json!({"type": "string", "contentEncoding": "base64"}),
        _ => return None,
    })
}

/// Builds the document; collects every message schema the operations name.
struct Writer<'a> {
    schemas: Map<String, Value>,
    pending: Vec<MessageDescriptor>,
    pool: &'a DescriptorPool,
}

impl Writer<'_> {
    /// The schema of a message: a reference, queued for `components.schemas`.
    fn message(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(message.full_name()) {
            return schema;
        }
        if !self.schemas.contains_key(message.full_name())
            && !self.pending.iter().any(|m| m == message)
        {
            self.pending.push(message.clone());
        }
        json!({"$ref": format!("#/components/schemas/{}", message.full_name())})
    }

    /// The schema of one value of `field` (a list's item, a map's value).
    fn kind(&mut self, field: &FieldDescriptor) -> Value {
        match field.kind() {
            Kind::Double | Kind::Float => json!({"type": "number"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "minimum": 0}),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({"type": "string", "format": "int64"})
            }
            Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
            Kind::Enum(e) => json!({
                "type": "string",
                "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>()
            }),
            Kind::Message(m) if field.is_map() => {
                let value = m.map_entry_value_field();
                let value = self.kind(&value);
                json!({"type": "object", "additionalProperties": value})
            }
            Kind::Message(m) => self.message(&m),
        }
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        let mut schema = self.kind(field);
        if field.is_list() {
            schema = json!({"type": "array", "items": schema});
        }
        // A reference takes siblings in 3.1: the description says how this field
        // uses its type.
        if let Some(text) = comment(&field.parent_file(), field.path())
            && let Some(object) = schema.as_object_mut()
        {
            object.insert("description".into(), Value::String(text));
        }
        schema
    }

    /// Writes every queued message's schema.
    fn drain(&mut self) {
        while let Some(message) = self.pending.pop() {
            if self.schemas.contains_key(message.full_name()) {
                continue;
            }
            // Placed first, so a message that refers to itself is not queued again.
            self.schemas
                .insert(message.full_name().to_owned(), json!({}));
            let mut properties = Map::new();
            for field in message.fields() {
                properties.insert(field.json_name().to_owned(), self.field(&field));
            }
            let mut schema = json!({"type": "object", "properties": properties});
            if let Some(text) = comment(&message.parent_file(), message.path()) {
                schema["description"] = Value::String(text);
            }
            self.schemas.insert(message.full_name().to_owned(), schema);
        }
    }

    /// Query parameters for the fields of `message` not in the path or the body:
    /// scalars, lists of scalars and the well-known messages written as strings,
    /// with nested messages' fields by dotted names.
    fn query(
        &mut self,
        message: &MessageDescriptor,
        prefix: &str,
        taken: &[String],
        depth: usize,
        out: &mut Vec<Value>,
    ) {
        for field in message.fields() {
            let name = format!("{prefix}{}", field.name());
            if taken
                .iter()
                .any(|t| t == &name || t.starts_with(&format!("{name}.")))
            {
                if let Kind::Message(inner) = field.kind()
                    && !taken.contains(&name)
                    && depth < 3
                {
                    self.query(&inner, &format!("{name}."), taken, depth + 1, out);
                }
                continue;
            }
            let json_name = format!(
                "{}{}",
                prefix
                    .split('.')
                    .filter(|s| !s.is_empty())
                    .map(|s| format!("{s}."))
                    .collect::<String>(),
                field.json_name()
            );
            match field.kind() {
                Kind::Message(inner)
                    if well_known(inner.full_name()).is_none() && !field.is_map() =>
                {
                    if depth < 3 && !field.is_list() {
                        self.query(&inner, &format!("{name}."), taken, depth + 1, out);
                    }
                }
                _ if field.is_map() => {}
                _ => {
                    let mut parameter = json!({
                        "name": json_name,
                        "in": "query",
                        "schema": self.field(&field),
                    });
                    if field.is_list() {
                        parameter["explode"] = Value::Bool(true);
                    }
                    out.push(parameter);
                }
            }
        }
    }
}

/// The document for every served method of `pool`; `Err` names a method whose rule
/// cannot be described.
pub fn document(pool: &DescriptorPool, version: &str) -> Result<Value, String> {
    let mut writer = Writer {
        schemas: Map::new(),
        pending: Vec::new(),
        pool,
    };
    let mut paths = Map::new();
    for method in served(pool) {
        let service = method.parent_service();
        let text = comment(&method.parent_file(), method.path());
        for (n, rule) in rules(writer.pool, &method)?.into_iter().enumerate() {
            let template =
                Template::parse(&rule.path).map_err(|e| format!("{}: {e}", method.full_name()))?;
            let (path, variables) = template
                .openapi_path()
                .map_err(|e| format!("{}: `{}`: {e}", method.full_name(), rule.path))?;
            let mut parameters: Vec<Value> = variables
                .iter()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "in": "path",
                        "required": true,
                        "schema": {"type": "string"},
                        "description": format!("Part of the request's `{}`: `{}`.", p.field, p.spelled),
                    })
                })
                .collect();
            // Every field the path binds, wildcards or not (`{parent=operator}`).
            let mut taken: Vec<String> =
                template.variables.iter().map(|v| v.field.clone()).collect();
            let input = method.input();
            let request_body = match rule.body.as_str() {
                "" => None,
                "*" => Some(writer.message(&input)),
                field => {
                    taken.push(field.to_owned());
                    let body = input
                        .get_field_by_name(field)
                        .ok_or_else(|| format!("{}: no field `{field}`", method.full_name()))?;
                    Some(writer.field(&body))
                }
            };
            if rule.body != "*" {
                writer.query(&input, "", &taken, 0, &mut parameters);
            }
            let output = method.output();
            let success = if !method.is_server_streaming() {
                json!({
                    "description": "The answer",
                    "content": {"application/json": {"schema": writer.message(&output)}}
                })
            } else if output.full_name() == EVENT_STREAM {
                parameters.push(json!({
                    "name": "Last-Event-ID",
                    "in": "header",
                    "schema": {"type": "string"},
                    "description": "Resume after this sequence (an EventSource sends it when it reconnects); wins over `afterSequence`."
                }));
                json!({
                    "description": "Server-Sent Events: each event under its type with its sequence as the id, `progress` marks on an idle stream, and an `error` event if the stream fails.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}
                })
            } else {
                json!({
                    "description": "The file's bytes, in order; a body cut short means the file could not be read whole.",
                    "content": {"application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}
                })
            };
            let mut operation = json!({
                "operationId": if n == 0 {
                    format!("{}_{}", service.name(), method.name())
                } else {
                    format!("{}_{}_{}", service.name(), method.name(), n + 1)
                },
                "tags": [service.name()],
                "summary": method.name(),
                "parameters": parameters,
                "responses": {
                    "200": success,
                    "default": {"$ref": "#/components/responses/Error"},
                },
            });
            if let Some(text) = &text {
                operation["description"] = Value::String(text.clone());
            }
            if let Some(schema) = request_body {
                operation["requestBody"] = json!({
                    "required": true,
                    "content": {"application/json": {"schema": schema}}
                });
            }
            let entry = paths
                .entry(path)
                .or_insert_with(|| Value::Object(Map::new()));
            entry[rule.method.to_lowercase()] = operation;
        }
    }
    writer.drain();
    Ok(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Liaison",
            "version": version,
            "description": "The Liaison hub's HTTP/JSON API: every gRPC method of `liaison.v1` at the path its `google.api.http` rule gives, in the protobuf JSON mapping (lowerCamelCase names, 64-bit integers as strings, enums by name, RFC 3339 times). Errors follow AIP-193.",
        },
        "security": [{"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from `liaison admin create-key`: `Authorization: Bearer <key>`."
                }
            },
            "responses": {
                "Error": {
                    "description": "An error: the HTTP status of AIP-193 and a `google.rpc.Status`.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "integer", "description": "The HTTP status."},
                                "status": {"type": "string", "description": "The canonical code: `NOT_FOUND`, `INVALID_ARGUMENT`, …"},
                                "message": {"type": "string"},
                                "details": {"type": "array", "items": {"$ref": "#/components/schemas/google.protobuf.Any"}}
                            }
                        }
                    }
                },
                "google.protobuf.Any": well_known("google.protobuf.Any"),
            }
        }
    }))
    .map(|mut document| {
        if let Some(schemas) = document["components"]["schemas"].as_object_mut() {
            schemas.extend(writer.schemas);
        }
        document
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_checked_in_document_is_the_one_the_build_writes() {
        let checked_in = include_str!("../../../proto/openapi.json");
        assert!(
            checked_in == super::super::OPENAPI_DOCUMENT,
            "proto/openapi.json is not what the protos make now; copy the build's: \
             `liaison openapi > proto/openapi.json`"
        );
    }
}
