//! The OpenAPI 3.1 description of the HTTP/JSON API (the Connect protocol's unary
//! calls, `src/grpc/connect.rs`), generated from `proto/` by build.rs: a POST path per
//! unary method, a schema per message and enum in protobuf's JSON mapping (field names
//! in lowerCamelCase, 64-bit integers as strings, enums by name, timestamps in RFC
//! 3339), the proto comments as descriptions, and Connect's error for every other
//! status. The server adds `servers` (the gRPC port's URL) when it serves the file.

use std::collections::{BTreeMap, HashMap};

use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet,
    field_descriptor_proto::{Label, Type},
};
use serde_json::{Map, Value, json};

/// The description of every unary method of the files in `package`.
pub fn generate(set: &FileDescriptorSet, package: &str, version: &str) -> Value {
    let mut schemas = BTreeMap::new();
    let mut paths = BTreeMap::new();
    for file in set.file.iter().filter(|f| f.package() == package) {
        let comments = comments(file);
        for (i, message) in file.message_type.iter().enumerate() {
            add_message(
                &mut schemas,
                &comments,
                &format!("{package}.{}", message.name()),
                message,
                vec![4, i as i32],
            );
        }
        for (i, enumeration) in file.enum_type.iter().enumerate() {
            let name = format!("{package}.{}", enumeration.name());
            let about = comments.get(&vec![5, i as i32]).cloned();
            schemas.insert(name, enum_schema(enumeration, about));
        }
        for (s, service) in file.service.iter().enumerate() {
            for (m, method) in service.method.iter().enumerate() {
                // Streams are gRPC and gRPC-Web only.
                if method.client_streaming() || method.server_streaming() {
                    continue;
                }
                let about = comments
                    .get(&vec![6, s as i32, 2, m as i32])
                    .cloned()
                    .unwrap_or_default();
                let summary = about
                    .split(". ")
                    .next()
                    .unwrap_or_default()
                    .trim_end_matches('.');
                let reference = |name: &str| json!({"$ref": format!("#/components/schemas/{}", name.trim_start_matches('.'))});
                paths.insert(
                    format!("/{package}.{}/{}", service.name(), method.name()),
                    json!({"post": {
                        "operationId": format!("{}_{}", service.name(), method.name()),
                        "tags": [service.name()],
                        "summary": summary,
                        "description": about,
                        "requestBody": {
                            "required": true,
                            "content": {"application/json": {"schema": reference(method.input_type())}},
                        },
                        "responses": {
                            "200": {
                                "description": "The call's answer.",
                                "content": {"application/json": {"schema": reference(method.output_type())}},
                            },
                            "default": {"$ref": "#/components/responses/Error"},
                        },
                    }}),
                );
            }
        }
    }
    schemas.insert(
        "connect.Error".to_owned(),
        json!({
            "type": "object",
            "description": "Connect's error: the status code by name, a message for people, and the gRPC status details (each a protobuf message, its type and its binary encoding in base64).",
            "required": ["code"],
            "properties": {
                "code": {"type": "string", "enum": crate::connect_codes::CODES},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {
                    "type": "object",
                    "required": ["type", "value"],
                    "properties": {
                        "type": {"type": "string", "description": "The message's full name, e.g. google.rpc.RetryInfo."},
                        "value": {"type": "string", "contentEncoding": "base64"},
                        "debug": {},
                    },
                }},
            },
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "citypark",
            "version": version,
            "description": "Every car park of a city as one: the unary methods of citypark's gRPC API (package citypark.v1) as plain HTTP/JSON by the Connect protocol, on the gRPC port. A call is a POST of the request's JSON (protobuf's JSON mapping) with Content-Type application/json; the answer is the response's JSON, every field included, or Connect's JSON error with Connect's HTTP status for its code. Registry writes and Ingest need an operator's API key, Reservations, SharedParking and a driver's Sessions calls a driver's token, both sent as `Authorization: Bearer …`; queries are public. The streaming methods (Availability.WatchAvailability, Ingest.Publish) are gRPC and gRPC-Web only.",
            "license": {"name": "See the project's repository"},
        },
        "security": [{}, {"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {"Error": {
                "description": "Connect's error; the HTTP status is Connect's for its code (400 invalid_argument, failed_precondition and out_of_range; 401 unauthenticated; 403 permission_denied; 404 not_found; 409 already_exists and aborted; 429 resource_exhausted; 499 canceled; 501 unimplemented; 503 unavailable; 504 deadline_exceeded; 500 the rest).",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/connect.Error"}}},
            }},
            "securitySchemes": {"bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An operator's API key, or a driver's token (a JWT).",
            }},
        },
    })
}

/// A file's leading comments by the path of what they describe.
fn comments(file: &prost_types::FileDescriptorProto) -> HashMap<Vec<i32>, String> {
    let Some(info) = &file.source_code_info else {
        return HashMap::new();
    };
    info.location
        .iter()
        .filter_map(|l| {
            let text = l.leading_comments.as_deref()?;
            let text = text.lines().map(str::trim).collect::<Vec<_>>().join(" ");
            Some((l.path.clone(), text.trim().to_owned()))
        })
        .collect()
}

/// Adds a message's schema, and its nested messages' and enums'.
fn add_message(
    schemas: &mut BTreeMap<String, Value>,
    comments: &HashMap<Vec<i32>, String>,
    name: &str,
    message: &DescriptorProto,
    path: Vec<i32>,
) {
    for (i, nested) in message.nested_type.iter().enumerate() {
        // Map entries are written inline, as objects.
        if nested.options.as_ref().is_some_and(|o| o.map_entry()) {
            continue;
        }
        let mut nested_path = path.clone();
        nested_path.extend([3, i as i32]);
        add_message(
            schemas,
            comments,
            &format!("{name}.{}", nested.name()),
            nested,
            nested_path,
        );
    }
    for (i, enumeration) in message.enum_type.iter().enumerate() {
        let mut enum_path = path.clone();
        enum_path.extend([4, i as i32]);
        schemas.insert(
            format!("{name}.{}", enumeration.name()),
            enum_schema(enumeration, comments.get(&enum_path).cloned()),
        );
    }
    let mut properties = Map::new();
    for (i, field) in message.field.iter().enumerate() {
        let mut schema = field_schema(field, message);
        let mut field_path = path.clone();
        field_path.extend([2, i as i32]);
        if let Some(about) = comments.get(&field_path) {
            schema = with_description(schema, about);
        }
        properties.insert(field.json_name().to_owned(), schema);
    }
    let mut schema = json!({
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    });
    if let Some(about) = comments.get(&path) {
        schema["description"] = about.clone().into();
    }
    schemas.insert(name.to_owned(), schema);
}

fn with_description(mut schema: Value, about: &str) -> Value {
    schema["description"] = about.into();
    schema
}

fn enum_schema(enumeration: &EnumDescriptorProto, about: Option<String>) -> Value {
    let names: Vec<&str> = enumeration.value.iter().map(|v| v.name()).collect();
    let mut schema = json!({"type": "string", "enum": names});
    if let Some(about) = about {
        schema["description"] = about.into();
    }
    schema
}

/// A field's schema in protobuf's JSON mapping.
fn field_schema(field: &FieldDescriptorProto, parent: &DescriptorProto) -> Value {
    if field.r#type() == Type::Message {
        // A map field's entry is a nested message of its own.
        let entry_name = field.type_name().rsplit('.').next().unwrap_or_default();
        if let Some(entry) = parent
            .nested_type
            .iter()
            .find(|n| n.name() == entry_name && n.options.as_ref().is_some_and(|o| o.map_entry()))
        {
            let value = entry
                .field
                .iter()
                .find(|f| f.number() == 2)
                .expect("a map entry's value");
            return json!({"type": "object", "additionalProperties": single_schema(value)});
        }
    }
    let single = single_schema(field);
    if field.label() == Label::Repeated {
        json!({"type": "array", "items": single})
    } else {
        single
    }
}

/// The schema of one value of a field.
fn single_schema(field: &FieldDescriptorProto) -> Value {
    let int64 = json!({"type": ["string", "integer"], "format": "int64", "pattern": "^-?[0-9]+$"});
    match field.r#type() {
        Type::Double | Type::Float => json!({"type": "number"}),
        Type::Int32 | Type::Sint32 | Type::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Type::Uint32 | Type::Fixed32 => {
            json!({"type": "integer", "minimum": 0, "maximum": u32::MAX})
        }
        Type::Int64 | Type::Sint64 | Type::Sfixed64 | Type::Uint64 | Type::Fixed64 => int64,
        Type::Bool => json!({"type": "boolean"}),
        Type::String => json!({"type": "string"}),
        Type::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Type::Enum | Type::Message | Type::Group => match field.type_name() {
            ".google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
            ".google.protobuf.Duration" => {
                json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"})
            }
            ".google.protobuf.Empty" => json!({"type": "object", "additionalProperties": false}),
            name => {
                json!({"$ref": format!("#/components/schemas/{}", name.trim_start_matches('.'))})
            }
        },
    }
}
