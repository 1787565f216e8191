//! The proto3 JSON of a message, written straight from its wire bytes by a plan made
//! once from its descriptor: what the Connect layer answers with; and a request's
//! JSON read into wire bytes by the same plan. A dynamic message
//! built and walked field by field (prost-reflect's serializer) cost about twice a
//! whole gRPC call for a FindNearby answer (BENCHMARKS.md, "Plain HTTP/JSON");
//! this reads each field once and writes it at once. Reading a request into a
//! dynamic message cost 6–7% of a JSON report's time; the plan writes its wire bytes
//! as it walks the parsed JSON.
//!
//! The output is protobuf's JSON mapping with every field: a field without presence
//! (a plain proto3 scalar, a repeated field, a map) is written with its zero value when
//! the wire lacks it; one with presence (a message, a oneof member, an `optional`) only
//! when set. 64-bit integers are strings, enums their names (the number when this
//! version does not know it), bytes standard base64, timestamps RFC 3339 and
//! durations seconds with an `s`. A message of a kind the plans do not cover (a
//! well-known type other than Timestamp, Duration or Empty) is left to prost-reflect.

use std::{collections::HashMap, fmt::Write as _};

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor};

/// Plans for every message of a pool, by full name.
pub struct Plans {
    plans: Vec<Plan>,
    by_name: HashMap<String, usize>,
}

/// How one message is written.
struct Plan {
    descriptor: MessageDescriptor,
    /// Fields in the descriptor's order.
    fields: Vec<Field>,
    /// A field's index by its number, for numbers below 64 (every citypark field);
    /// others are found by a scan.
    by_number: [u8; 64],
    /// A field's index by its JSON name and by its proto name, for reading.
    by_key: HashMap<String, usize>,
    /// Written by prost-reflect instead (see the module's documentation).
    dynamic: bool,
}

const NONE: u8 = u8::MAX;

struct Field {
    /// `"jsonName":`, escaped once.
    key: String,
    /// The JSON name, for messages about the field.
    json: String,
    /// Its oneof (not the one a proto3 `optional` makes), by index: one member at most.
    oneof: Option<u16>,
    number: u32,
    value: Value,
    shape: Shape,
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// Written when absent, as its zero value.
    Plain,
    /// Written only when set.
    Present,
    List,
    /// A map, its entry's key (field 1) and value (field 2).
    Map,
}

/// One value's kind, and for a map field the entry's key and value.
#[derive(Clone)]
enum Value {
    Double,
    Float,
    Int32,
    Sint32,
    Uint32,
    Sfixed32,
    Fixed32,
    Int64,
    Sint64,
    Uint64,
    Sfixed64,
    Fixed64,
    Bool,
    String,
    Bytes,
    /// Names by number, sorted by number.
    Enum(std::sync::Arc<[(i32, String)]>),
    Message(usize),
    Timestamp,
    Duration,
    Empty,
    MapEntry(Box<Value>, Box<Value>),
}

/// A message that could not be read: bytes that are not the message the descriptor
/// says (never the server's own answers).
#[derive(Debug)]
pub struct Malformed;

impl Plans {
    pub fn new(pool: &DescriptorPool) -> Self {
        let descriptors: Vec<MessageDescriptor> = pool.all_messages().collect();
        let by_name: HashMap<String, usize> = descriptors
            .iter()
            .enumerate()
            .map(|(i, d)| (d.full_name().to_owned(), i))
            .collect();
        let plans = descriptors.iter().map(|d| plan(d, &by_name)).collect();
        Self { plans, by_name }
    }

    /// Writes the JSON of `bytes`, a message of kind `name`.
    pub fn write(&self, name: &str, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
        let index = *self.by_name.get(name).ok_or(Malformed)?;
        let mut text = String::with_capacity(bytes.len() * 3);
        self.message(index, bytes, &mut text)?;
        if out.is_empty() {
            // The usual case: the text is the output, not copied into it.
            *out = text.into_bytes();
        } else {
            out.extend_from_slice(text.as_bytes());
        }
        Ok(())
    }

    fn message(&self, index: usize, bytes: &[u8], out: &mut String) -> Result<(), Malformed> {
        let plan = &self.plans[index];
        if plan.dynamic {
            let message =
                DynamicMessage::decode(plan.descriptor.clone(), bytes).map_err(|_| Malformed)?;
            let options = prost_reflect::SerializeOptions::new().skip_default_fields(false);
            let mut json = Vec::new();
            message
                .serialize_with_options(&mut serde_json::Serializer::new(&mut json), &options)
                .map_err(|_| Malformed)?;
            out.push_str(std::str::from_utf8(&json).map_err(|_| Malformed)?);
            return Ok(());
        }
        // Each field's occurrences in wire order, grouped by field.
        let mut seen: Vec<(usize, Wire<'_>)> = Vec::with_capacity(plan.fields.len());
        let mut reader = Reader(bytes);
        while !reader.0.is_empty() {
            let (number, wire) = reader.field()?;
            let found = if number < 64 {
                plan.by_number[number as usize]
            } else {
                plan.fields
                    .iter()
                    .position(|f| f.number == number)
                    .map_or(NONE, |i| i as u8)
            };
            // A field this version does not know is left out, as prost-reflect does.
            if found != NONE {
                seen.push((found as usize, wire));
            }
        }
        seen.sort_by_key(|(field, _)| *field);
        out.push('{');
        let mut first = true;
        let mut rest = seen.as_slice();
        for (i, field) in plan.fields.iter().enumerate() {
            let count = rest.iter().take_while(|(f, _)| *f == i).count();
            let (mine, after) = rest.split_at(count);
            rest = after;
            if mine.is_empty() && field.shape == Shape::Present {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&field.key);
            match field.shape {
                Shape::Plain | Shape::Present => match mine.last() {
                    Some((_, wire)) => self.value(&field.value, *wire, out)?,
                    None => zero(&field.value, out),
                },
                Shape::List => {
                    out.push('[');
                    let mut first = true;
                    for (_, wire) in mine {
                        self.each(
                            &field.value,
                            *wire,
                            |plans, wire, out| {
                                if !std::mem::take(&mut first) {
                                    out.push(',');
                                }
                                plans.value(&field.value, wire, out)
                            },
                            out,
                        )?;
                    }
                    out.push(']');
                }
                Shape::Map => {
                    let Value::MapEntry(key, value) = &field.value else {
                        return Err(Malformed);
                    };
                    out.push('{');
                    for (n, (_, wire)) in mine.iter().enumerate() {
                        if n > 0 {
                            out.push(',');
                        }
                        self.entry(key, value, wire.bytes()?, out)?;
                    }
                    out.push('}');
                }
            }
        }
        out.push('}');
        Ok(())
    }

    /// Calls `write` for each value in one occurrence of a repeated field: one, or a
    /// packed run of numbers.
    fn each<'a>(
        &self,
        value: &Value,
        wire: Wire<'a>,
        mut write: impl FnMut(&Self, Wire<'a>, &mut String) -> Result<(), Malformed>,
        out: &mut String,
    ) -> Result<(), Malformed> {
        let packed_width = match value {
            Value::Double | Value::Fixed64 | Value::Sfixed64 => Some(8),
            Value::Float | Value::Fixed32 | Value::Sfixed32 => Some(4),
            Value::Int32
            | Value::Sint32
            | Value::Uint32
            | Value::Int64
            | Value::Sint64
            | Value::Uint64
            | Value::Bool
            | Value::Enum(_) => Some(0),
            _ => None,
        };
        match (packed_width, wire) {
            (Some(width), Wire::Bytes(packed)) => {
                let mut reader = Reader(packed);
                while !reader.0.is_empty() {
                    let one = match width {
                        8 => Wire::Fixed64(reader.fixed::<8>()?),
                        4 => Wire::Fixed32(reader.fixed::<4>()? as u32),
                        _ => Wire::Varint(reader.varint()?),
                    };
                    write(self, one, out)?;
                }
                Ok(())
            }
            _ => write(self, wire, out),
        }
    }

    fn entry(
        &self,
        key: &Value,
        value: &Value,
        bytes: &[u8],
        out: &mut String,
    ) -> Result<(), Malformed> {
        let (mut k, mut v) = (None, None);
        let mut reader = Reader(bytes);
        while !reader.0.is_empty() {
            match reader.field()? {
                (1, wire) => k = Some(wire),
                (2, wire) => v = Some(wire),
                _ => {}
            }
        }
        // A map's keys are strings in JSON, whatever their kind.
        let mut written = String::new();
        match k {
            Some(wire) => self.value(key, wire, &mut written)?,
            None => zero(key, &mut written),
        }
        if written.starts_with('"') {
            out.push_str(&written);
        } else {
            let _ = write!(out, "\"{written}\"");
        }
        out.push(':');
        match v {
            Some(wire) => self.value(value, wire, out),
            None => {
                zero(value, out);
                Ok(())
            }
        }
    }

    fn value(&self, value: &Value, wire: Wire<'_>, out: &mut String) -> Result<(), Malformed> {
        match (value, wire) {
            (Value::Double, Wire::Fixed64(bits)) => number(f64::from_bits(bits), out),
            (Value::Float, Wire::Fixed32(bits)) => number(f64::from(f32::from_bits(bits)), out),
            (Value::Int32, Wire::Varint(v)) => push(out, v as i32),
            (Value::Sint32, Wire::Varint(v)) => push(out, zigzag(v) as i32),
            (Value::Uint32, Wire::Varint(v)) => push(out, v as u32),
            (Value::Sfixed32, Wire::Fixed32(v)) => push(out, v as i32),
            (Value::Fixed32, Wire::Fixed32(v)) => push(out, v),
            (Value::Int64, Wire::Varint(v)) => quoted(out, v as i64),
            (Value::Sint64, Wire::Varint(v)) => quoted(out, zigzag(v)),
            (Value::Uint64, Wire::Varint(v)) => quoted(out, v),
            (Value::Sfixed64, Wire::Fixed64(v)) => quoted(out, v as i64),
            (Value::Fixed64, Wire::Fixed64(v)) => quoted(out, v),
            (Value::Bool, Wire::Varint(v)) => out.push_str(if v != 0 { "true" } else { "false" }),
            (Value::String, Wire::Bytes(b)) => {
                string(std::str::from_utf8(b).map_err(|_| Malformed)?, out)
            }
            (Value::Bytes, Wire::Bytes(b)) => {
                out.push('"');
                base64::engine::general_purpose::STANDARD.encode_string(b, out);
                out.push('"');
            }
            (Value::Enum(names), Wire::Varint(v)) => enumeration(names, v as i32, out),
            (Value::Message(index), Wire::Bytes(b)) => self.message(*index, b, out)?,
            (Value::Timestamp, Wire::Bytes(b)) => {
                let (seconds, nanos) = seconds_and_nanos(b)?;
                let at = jiff::Timestamp::new(seconds, nanos).map_err(|_| Malformed)?;
                let _ = write!(out, "\"{at}\"");
            }
            (Value::Duration, Wire::Bytes(b)) => {
                let (seconds, nanos) = seconds_and_nanos(b)?;
                duration(seconds, nanos, out);
            }
            (Value::Empty, Wire::Bytes(_)) => out.push_str("{}"),
            _ => return Err(Malformed),
        }
        Ok(())
    }
}

/// The plan of one message.
fn plan(descriptor: &MessageDescriptor, by_name: &HashMap<String, usize>) -> Plan {
    let mut dynamic = false;
    let mut value_of = |kind: Kind| -> Value {
        match kind {
            Kind::Double => Value::Double,
            Kind::Float => Value::Float,
            Kind::Int32 => Value::Int32,
            Kind::Sint32 => Value::Sint32,
            Kind::Uint32 => Value::Uint32,
            Kind::Sfixed32 => Value::Sfixed32,
            Kind::Fixed32 => Value::Fixed32,
            Kind::Int64 => Value::Int64,
            Kind::Sint64 => Value::Sint64,
            Kind::Uint64 => Value::Uint64,
            Kind::Sfixed64 => Value::Sfixed64,
            Kind::Fixed64 => Value::Fixed64,
            Kind::Bool => Value::Bool,
            Kind::String => Value::String,
            Kind::Bytes => Value::Bytes,
            Kind::Enum(e) => {
                let mut names: Vec<(i32, String)> = e
                    .values()
                    .map(|v| (v.number(), v.name().to_owned()))
                    .collect();
                names.sort_by_key(|(n, _)| *n);
                Value::Enum(names.into())
            }
            Kind::Message(m) => match m.full_name() {
                "google.protobuf.Timestamp" => Value::Timestamp,
                "google.protobuf.Duration" => Value::Duration,
                "google.protobuf.Empty" => Value::Empty,
                name if name.starts_with("google.protobuf.") => {
                    dynamic = true;
                    Value::Empty
                }
                name => Value::Message(by_name[name]),
            },
        }
    };
    let mut fields = Vec::new();
    for field in descriptor.fields() {
        let (value, shape) = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                unreachable!("a map's entry is a message")
            };
            let key = value_of(entry.map_entry_key_field().kind());
            let value = value_of(entry.map_entry_value_field().kind());
            (Value::MapEntry(Box::new(key), Box::new(value)), Shape::Map)
        } else if field.is_list() {
            (value_of(field.kind()), Shape::List)
        } else if field.supports_presence() {
            (value_of(field.kind()), Shape::Present)
        } else {
            (value_of(field.kind()), Shape::Plain)
        };
        let mut key = String::new();
        string(field.json_name(), &mut key);
        key.push(':');
        let oneof = field
            .containing_oneof()
            .filter(|o| !o.is_synthetic())
            .and_then(|o| descriptor.oneofs().position(|x| x.name() == o.name()))
            .map(|i| i as u16);
        fields.push(Field {
            key,
            json: field.json_name().to_owned(),
            oneof,
            number: field.number(),
            value,
            shape,
        });
    }
    let mut by_number = [NONE; 64];
    for (i, field) in fields.iter().enumerate() {
        if field.number < 64 && i < NONE as usize {
            by_number[field.number as usize] = i as u8;
        }
    }
    // More fields than the index holds: left to prost-reflect.
    dynamic |= fields.len() >= NONE as usize;
    let mut by_key = HashMap::new();
    for (i, field) in descriptor.fields().enumerate() {
        by_key.insert(field.json_name().to_owned(), i);
        by_key.insert(field.name().to_owned(), i);
    }
    Plan {
        descriptor: descriptor.clone(),
        fields,
        by_number,
        by_key,
        dynamic,
    }
}

/// One field's value on the wire.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl<'a> Wire<'a> {
    fn bytes(self) -> Result<&'a [u8], Malformed> {
        match self {
            Wire::Bytes(b) => Ok(b),
            _ => Err(Malformed),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value = 0u64;
        for (i, byte) in self.0.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(value);
            }
        }
        Err(Malformed)
    }

    fn fixed<const N: usize>(&mut self) -> Result<u64, Malformed> {
        let (bytes, rest) = self.0.split_first_chunk::<N>().ok_or(Malformed)?;
        self.0 = rest;
        let mut wide = [0u8; 8];
        wide[..N].copy_from_slice(bytes);
        Ok(u64::from_le_bytes(wide))
    }

    /// The next field's number and value.
    fn field(&mut self) -> Result<(u32, Wire<'a>), Malformed> {
        let tag = self.varint()?;
        let number = u32::try_from(tag >> 3).map_err(|_| Malformed)?;
        let wire = match tag & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(self.fixed::<8>()?),
            5 => Wire::Fixed32(self.fixed::<4>()? as u32),
            2 => {
                let length = usize::try_from(self.varint()?).map_err(|_| Malformed)?;
                if length > self.0.len() {
                    return Err(Malformed);
                }
                let (bytes, rest) = self.0.split_at(length);
                self.0 = rest;
                Wire::Bytes(bytes)
            }
            // Groups (3, 4) are proto2's and never in citypark's messages.
            _ => return Err(Malformed),
        };
        Ok((number, wire))
    }
}

fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// An integer, by itoa: `core::fmt` cost a FindNearby answer's JSON several µs.
fn push(out: &mut String, v: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(v));
}

fn quoted(out: &mut String, v: impl itoa::Integer) {
    out.push('"');
    push(out, v);
    out.push('"');
}

/// A float as JSON: the shortest text that reads back the same (ryu, as serde_json
/// wrote it), or the mapping's strings for what JSON has no number for.
fn number(v: f64, out: &mut String) {
    if v.is_finite() {
        out.push_str(ryu::Buffer::new().format_finite(v));
    } else if v.is_nan() {
        out.push_str("\"NaN\"");
    } else if v > 0.0 {
        out.push_str("\"Infinity\"");
    } else {
        out.push_str("\"-Infinity\"");
    }
}

/// A JSON string: quotes, backslashes and control characters escaped (RFC 8259 §7).
fn string(s: &str, out: &mut String) {
    out.push('"');
    let mut plain = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

fn enumeration(names: &[(i32, String)], number: i32, out: &mut String) {
    match names.binary_search_by_key(&number, |(n, _)| *n) {
        Ok(i) => {
            out.push('"');
            out.push_str(&names[i].1);
            out.push('"');
        }
        Err(_) => push(out, number),
    }
}

/// The zero value of a field the wire lacks.
fn zero(value: &Value, out: &mut String) {
    match value {
        Value::Double | Value::Float => out.push('0'),
        Value::Int32 | Value::Sint32 | Value::Uint32 | Value::Sfixed32 | Value::Fixed32 => {
            out.push('0')
        }
        Value::Int64 | Value::Sint64 | Value::Uint64 | Value::Sfixed64 | Value::Fixed64 => {
            out.push_str("\"0\"")
        }
        Value::Bool => out.push_str("false"),
        Value::String | Value::Bytes => out.push_str("\"\""),
        Value::Enum(names) => enumeration(names, 0, out),
        // Messages have presence; these are written only for a map entry's value.
        Value::Message(_) | Value::Empty | Value::MapEntry(..) => out.push_str("{}"),
        Value::Timestamp => out.push_str("\"1970-01-01T00:00:00Z\""),
        Value::Duration => out.push_str("\"0s\""),
    }
}

/// A Timestamp's or Duration's fields.
fn seconds_and_nanos(bytes: &[u8]) -> Result<(i64, i32), Malformed> {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    let mut reader = Reader(bytes);
    while !reader.0.is_empty() {
        match reader.field()? {
            (1, Wire::Varint(v)) => seconds = v as i64,
            (2, Wire::Varint(v)) => nanos = v as i32,
            _ => {}
        }
    }
    Ok((seconds, nanos))
}

/// A Duration as the mapping writes it: seconds, with 3, 6 or 9 digits of fraction
/// when it has one, and `s`.
fn duration(seconds: i64, nanos: i32, out: &mut String) {
    let negative = seconds < 0 || nanos < 0;
    let (seconds, nanos) = (seconds.unsigned_abs(), nanos.unsigned_abs());
    out.push('"');
    if negative {
        out.push('-');
    }
    push(out, seconds);
    if nanos > 0 {
        let digits = format!("{nanos:09}");
        let kept = if nanos % 1_000_000 == 0 {
            3
        } else if nanos % 1_000 == 0 {
            6
        } else {
            9
        };
        out.push('.');
        out.push_str(&digits[..kept]);
    }
    out.push_str("s\"");
}

/// A request that is not its message's JSON: what is wrong, and where.
#[derive(Debug)]
pub struct Invalid(pub String);

impl Invalid {
    fn at(path: &str, what: impl std::fmt::Display) -> Self {
        if path.is_empty() {
            Invalid(what.to_string())
        } else {
            Invalid(format!("{path}: {what}"))
        }
    }
}

type Json = serde_json::Value;

impl Plans {
    /// Reads `json`, the proto3 JSON of a message of kind `name`, into its wire bytes.
    /// Every form the mapping allows is read: a field by its JSON or its proto name,
    /// `null` for its default, enums by name or number, integers as numbers or strings,
    /// bytes in either base64 alphabet, with or without padding.
    pub fn read(&self, name: &str, json: &[u8], out: &mut Vec<u8>) -> Result<(), Invalid> {
        let index = *self
            .by_name
            .get(name)
            .ok_or_else(|| Invalid(format!("no message {name}")))?;
        let value: Json = serde_json::from_slice(json).map_err(|e| Invalid(e.to_string()))?;
        self.read_message(index, &value, "", out)
    }

    fn read_message(
        &self,
        index: usize,
        value: &Json,
        path: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), Invalid> {
        let plan = &self.plans[index];
        if plan.dynamic {
            let message = DynamicMessage::deserialize(plan.descriptor.clone(), value)
                .map_err(|e| Invalid::at(path, e))?;
            message.encode_raw(out);
            return Ok(());
        }
        let Json::Object(object) = value else {
            return Err(Invalid::at(
                path,
                format!("must be an object ({})", plan.descriptor.full_name()),
            ));
        };
        let mut oneofs: Vec<(u16, &str)> = Vec::new();
        for (key, value) in object {
            let Some(&i) = plan.by_key.get(key.as_str()) else {
                return Err(Invalid::at(
                    path,
                    format!("{} has no field {key:?}", plan.descriptor.full_name()),
                ));
            };
            // null is the field's default: nothing to write.
            if value.is_null() {
                continue;
            }
            let field = &plan.fields[i];
            let here = if path.is_empty() {
                field.json.clone()
            } else {
                format!("{path}.{}", field.json)
            };
            if let Some(oneof) = field.oneof {
                if let Some((_, other)) = oneofs.iter().find(|(o, _)| *o == oneof) {
                    return Err(Invalid::at(
                        path,
                        format!("{other:?} and {key:?} are one of a kind: set one"),
                    ));
                }
                oneofs.push((oneof, key));
            }
            match field.shape {
                Shape::Plain | Shape::Present => {
                    self.read_value(field.number, &field.value, value, &here, out)?
                }
                Shape::List => {
                    let Json::Array(items) = value else {
                        return Err(Invalid::at(&here, "must be an array"));
                    };
                    if packable(&field.value) {
                        let mut packed = Vec::new();
                        for (n, item) in items.iter().enumerate() {
                            scalar(&field.value, item, &format!("{here}[{n}]"), &mut packed)?;
                        }
                        if !packed.is_empty() {
                            bytes_field(field.number, &packed, out);
                        }
                    } else {
                        for (n, item) in items.iter().enumerate() {
                            self.read_value(
                                field.number,
                                &field.value,
                                item,
                                &format!("{here}[{n}]"),
                                out,
                            )?;
                        }
                    }
                }
                Shape::Map => {
                    let (Value::MapEntry(key_kind, value_kind), Json::Object(entries)) =
                        (&field.value, value)
                    else {
                        return Err(Invalid::at(&here, "must be an object"));
                    };
                    for (k, v) in entries {
                        let mut entry = Vec::new();
                        self.read_value(
                            1,
                            key_kind,
                            &map_key(key_kind, k),
                            &format!("{here}.{k}"),
                            &mut entry,
                        )?;
                        self.read_value(2, value_kind, v, &format!("{here}.{k}"), &mut entry)?;
                        bytes_field(field.number, &entry, out);
                    }
                }
            }
        }
        Ok(())
    }

    /// One value of field `number`, tag and all.
    fn read_value(
        &self,
        number: u32,
        kind: &Value,
        value: &Json,
        path: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), Invalid> {
        match kind {
            Value::Message(index) => {
                let mut nested = Vec::new();
                self.read_message(*index, value, path, &mut nested)?;
                bytes_field(number, &nested, out);
            }
            Value::Timestamp => {
                let text = value
                    .as_str()
                    .ok_or_else(|| Invalid::at(path, "must be an RFC 3339 time"))?;
                let at: jiff::Timestamp = text
                    .parse()
                    .map_err(|_| Invalid::at(path, format!("{text:?} is not an RFC 3339 time")))?;
                let mut nested = Vec::new();
                seconds_nanos(at.as_second(), at.subsec_nanosecond(), &mut nested);
                bytes_field(number, &nested, out);
            }
            Value::Duration => {
                let text = value
                    .as_str()
                    .ok_or_else(|| Invalid::at(path, "must be a duration such as \"300s\""))?;
                let (seconds, nanos) = parse_duration(text).ok_or_else(|| {
                    Invalid::at(path, format!("{text:?} is not a duration such as \"300s\""))
                })?;
                let mut nested = Vec::new();
                seconds_nanos(seconds, nanos, &mut nested);
                bytes_field(number, &nested, out);
            }
            Value::Empty => {
                if !value.as_object().is_some_and(|o| o.is_empty()) {
                    return Err(Invalid::at(path, "must be {}"));
                }
                bytes_field(number, &[], out);
            }
            Value::String => {
                let text = value
                    .as_str()
                    .ok_or_else(|| Invalid::at(path, "must be a string"))?;
                bytes_field(number, text.as_bytes(), out);
            }
            Value::Bytes => {
                let text = value
                    .as_str()
                    .ok_or_else(|| Invalid::at(path, "must be base64"))?;
                let bytes =
                    base64_bytes(text).ok_or_else(|| Invalid::at(path, "must be base64"))?;
                bytes_field(number, &bytes, out);
            }
            Value::MapEntry(..) => return Err(Invalid::at(path, "a map inside a map")),
            scalar_kind => {
                tag(number, wire_type(scalar_kind), out);
                scalar(scalar_kind, value, path, out)?;
            }
        }
        Ok(())
    }
}

/// Whether a repeated field of this kind is packed.
fn packable(kind: &Value) -> bool {
    !matches!(
        kind,
        Value::String
            | Value::Bytes
            | Value::Message(_)
            | Value::Timestamp
            | Value::Duration
            | Value::Empty
            | Value::MapEntry(..)
    )
}

fn wire_type(kind: &Value) -> u8 {
    match kind {
        Value::Double | Value::Fixed64 | Value::Sfixed64 => 1,
        Value::Float | Value::Fixed32 | Value::Sfixed32 => 5,
        Value::String
        | Value::Bytes
        | Value::Message(_)
        | Value::Timestamp
        | Value::Duration
        | Value::Empty
        | Value::MapEntry(..) => 2,
        _ => 0,
    }
}

/// A number or a bool's value, without its tag.
fn scalar(kind: &Value, value: &Json, path: &str, out: &mut Vec<u8>) -> Result<(), Invalid> {
    let integer = |min: i128, max: i128| -> Result<i128, Invalid> {
        let n = match value {
            Json::Number(n) => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from))
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 1e20)
                        .map(|f| f as i128)
                }),
            Json::String(s) => s.parse::<i128>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 1e20)
                    .map(|f| f as i128)
            }),
            _ => None,
        };
        n.filter(|n| (min..=max).contains(n))
            .ok_or_else(|| Invalid::at(path, format!("must be an integer from {min} to {max}")))
    };
    let float = || -> Result<f64, Invalid> {
        match value {
            Json::Number(n) => n.as_f64(),
            Json::String(s) => match s.as_str() {
                "NaN" => Some(f64::NAN),
                "Infinity" => Some(f64::INFINITY),
                "-Infinity" => Some(f64::NEG_INFINITY),
                s => s.parse().ok(),
            },
            _ => None,
        }
        .ok_or_else(|| Invalid::at(path, "must be a number"))
    };
    match kind {
        Value::Double => out.extend_from_slice(&float()?.to_le_bytes()),
        Value::Float => out.extend_from_slice(&(float()? as f32).to_le_bytes()),
        Value::Int32
        | Value::Sint32
        | Value::Sfixed32
        | Value::Uint32
        | Value::Fixed32
        | Value::Int64
        | Value::Sint64
        | Value::Sfixed64
        | Value::Uint64
        | Value::Fixed64 => {
            let (min, max): (i128, i128) = match kind {
                Value::Int32 | Value::Sint32 | Value::Sfixed32 => {
                    (i32::MIN.into(), i32::MAX.into())
                }
                Value::Uint32 | Value::Fixed32 => (0, u32::MAX.into()),
                Value::Uint64 | Value::Fixed64 => (0, u64::MAX.into()),
                _ => (i64::MIN.into(), i64::MAX.into()),
            };
            // In range, so the low 64 bits are the value, two's complement for a
            // negative one and as it is for a uint64 above i64's.
            let bits = integer(min, max)? as i64;
            match kind {
                Value::Sint32 | Value::Sint64 => varint(((bits << 1) ^ (bits >> 63)) as u64, out),
                Value::Sfixed32 | Value::Fixed32 => {
                    out.extend_from_slice(&(bits as u32).to_le_bytes())
                }
                Value::Sfixed64 | Value::Fixed64 => {
                    out.extend_from_slice(&(bits as u64).to_le_bytes())
                }
                _ => varint(bits as u64, out),
            }
        }
        Value::Bool => match value {
            Json::Bool(b) => varint(u64::from(*b), out),
            _ => return Err(Invalid::at(path, "must be true or false")),
        },
        Value::Enum(names) => {
            let number = match value {
                Json::String(name) => names
                    .iter()
                    .find(|(_, n)| n == name)
                    .map(|(number, _)| *number)
                    .ok_or_else(|| {
                        Invalid::at(path, format!("{name:?} is not one of its values"))
                    })?,
                _ => integer(i32::MIN.into(), i32::MAX.into())? as i32,
            };
            varint(number as i64 as u64, out)
        }
        _ => return Err(Invalid::at(path, "must be a number")),
    }
    Ok(())
}

/// A map's key, which JSON writes as a string, as the value of its kind.
fn map_key(kind: &Value, key: &str) -> Json {
    match kind {
        Value::String => Json::from(key),
        Value::Bool => match key {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ => Json::from(key),
        },
        _ => Json::from(key),
    }
}

fn base64_bytes(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

/// `"-1.5s"`: seconds, up to nine digits of fraction, and `s`.
fn parse_duration(text: &str) -> Option<(i64, i32)> {
    let digits = text.strip_suffix('s')?;
    let (negative, digits) = match digits.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, digits),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 9
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let seconds: i64 = whole.parse().ok()?;
    let nanos: i32 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().ok()?
    };
    Some(if negative {
        (-seconds, -nanos)
    } else {
        (seconds, nanos)
    })
}

fn seconds_nanos(seconds: i64, nanos: i32, out: &mut Vec<u8>) {
    if seconds != 0 {
        tag(1, 0, out);
        varint(seconds as u64, out);
    }
    if nanos != 0 {
        tag(2, 0, out);
        varint(nanos as i64 as u64, out);
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(number: u32, wire_type: u8, out: &mut Vec<u8>) {
    varint(u64::from(number) << 3 | u64::from(wire_type), out);
}

fn bytes_field(number: u32, bytes: &[u8], out: &mut Vec<u8>) {
    tag(number, 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::pb;

    fn pool() -> DescriptorPool {
        let mut pool = DescriptorPool::new();
        pool.decode_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .unwrap();
        pool
    }

    /// Numbers compared by value: `800` and `800.0` are one number.
    fn normalised(value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value as J;
        match value {
            J::Number(n) => J::from(n.as_f64().unwrap()),
            J::Array(a) => J::Array(a.into_iter().map(normalised).collect()),
            J::Object(o) => J::Object(o.into_iter().map(|(k, v)| (k, normalised(v))).collect()),
            other => other,
        }
    }

    /// Our JSON of `message` and prost-reflect's, with every field.
    fn both(
        pool: &DescriptorPool,
        plans: &Plans,
        message: &impl Message,
        name: &str,
    ) -> (serde_json::Value, serde_json::Value) {
        let bytes = message.encode_to_vec();
        let mut ours = Vec::new();
        plans.write(name, &bytes, &mut ours).unwrap();
        let descriptor = pool.get_message_by_name(name).unwrap();
        let dynamic = DynamicMessage::decode(descriptor, bytes.as_slice()).unwrap();
        let options = prost_reflect::SerializeOptions::new().skip_default_fields(false);
        let mut theirs = Vec::new();
        dynamic
            .serialize_with_options(&mut serde_json::Serializer::new(&mut theirs), &options)
            .unwrap();
        let ours: serde_json::Value = serde_json::from_slice(&ours)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&ours)));
        (
            normalised(ours),
            normalised(serde_json::from_slice(&theirs).unwrap()),
        )
    }

    fn at(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos })
    }

    #[test]
    fn the_json_is_prost_reflects_for_every_kind_of_field() {
        let pool = pool();
        let plans = Plans::new(&pool);
        let car_park = pb::CarPark {
            id: "qd-\"000001\"\n\u{1}é停车".into(),
            region: "qingdao".into(),
            name: "Garage".into(),
            location: Some(pb::LatLng {
                latitude: 36.06,
                longitude: -120.000_000_1,
            }),
            kind: pb::CarParkKind::UndergroundGarage.into(),
            capacity: vec![pb::CategoryCapacity {
                category: pb::SpaceCategory::EvCharging.into(),
                spaces: 10,
            }],
            opening_hours: vec![
                pb::OpeningPeriod {
                    day: 1,
                    open_minute: 0,
                    close_minute: 1440,
                },
                pb::OpeningPeriod {
                    day: 7,
                    open_minute: 60,
                    close_minute: 120,
                },
            ],
            tariff: Some(pb::Tariff {
                currency: "CNY".into(),
                hourly_rate_minor: -5,
                version: u32::MAX,
                ..Default::default()
            }),
            max_height_cm: 210,
            modified_at: at(1_765_000_000, 239_042_252),
            ..Default::default()
        };
        let nearby = pb::FindNearbyResponse {
            results: vec![
                pb::NearbyCarPark {
                    car_park_id: "a".into(),
                    distance_m: 60.596_480_891_120_84,
                    available: 0,
                    data_age_seconds: Some(0),
                    price_minor: Some(-1),
                    car_park: Some(car_park.clone()),
                    ..Default::default()
                },
                pb::NearbyCarPark {
                    kind: 99,
                    ..Default::default()
                },
            ],
        };
        let (ours, theirs) = both(&pool, &plans, &nearby, "citypark.v1.FindNearbyResponse");
        assert_eq!(ours, theirs);
        // Zero values are written, unset optionals and messages are not.
        assert_eq!(ours["results"][1]["available"], 0.0);
        assert!(ours["results"][1].get("priceMinor").is_none());
        assert!(ours["results"][1].get("carPark").is_none());
        assert_eq!(
            ours["results"][1]["kind"], 99.0,
            "an unknown enum value: its number"
        );

        let history = pb::GetOccupancyHistoryResponse {
            car_park_id: "a".into(),
            buckets: vec![pb::OccupancyBucket {
                start: at(0, 0),
                min_free: u32::MAX,
                ..Default::default()
            }],
            ..Default::default()
        };
        let (ours, theirs) = both(
            &pool,
            &plans,
            &history,
            "citypark.v1.GetOccupancyHistoryResponse",
        );
        assert_eq!(ours, theirs);
        let request = pb::GetOccupancyHistoryRequest {
            step: Some(prost_types::Duration {
                seconds: 300,
                nanos: 500_000_000,
            }),
            from: at(-1, 0),
            ..Default::default()
        };
        let (ours, theirs) = both(
            &pool,
            &plans,
            &request,
            "citypark.v1.GetOccupancyHistoryRequest",
        );
        assert_eq!(ours, theirs);
        assert_eq!(ours["step"], "300.500s");
        let empty = pb::FindNearbyResponse::default();
        let (ours, theirs) = both(&pool, &plans, &empty, "citypark.v1.FindNearbyResponse");
        assert_eq!(
            (&ours, ours["results"].as_array().map(Vec::len)),
            (&theirs, Some(0))
        );
    }

    #[test]
    fn bytes_that_are_not_the_message_are_refused() {
        let plans = Plans::new(&pool());
        let mut out = Vec::new();
        for bad in [
            &b"\x0a\x05ab"[..],
            b"\x08",
            b"\x0b",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        ] {
            assert!(
                plans.write("citypark.v1.CarPark", bad, &mut out).is_err(),
                "{bad:?}"
            );
        }
        assert!(plans.write("citypark.v1.Nothing", b"", &mut out).is_err());
    }

    /// `json` read by our plans and by prost-reflect: the same message.
    fn read_both(
        pool: &DescriptorPool,
        plans: &Plans,
        name: &str,
        json: &str,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut ours = Vec::new();
        plans
            .read(name, json.as_bytes(), &mut ours)
            .unwrap_or_else(|e| panic!("{json}: {e:?}"));
        let descriptor = pool.get_message_by_name(name).unwrap();
        let mut de = serde_json::Deserializer::from_str(json);
        let theirs = DynamicMessage::deserialize(descriptor, &mut de)
            .unwrap()
            .encode_to_vec();
        (ours, theirs)
    }

    #[test]
    fn requests_read_as_prost_reflect_reads_them_in_every_form_the_mapping_allows() {
        let pool = pool();
        let plans = Plans::new(&pool);
        let nearby = [
            r#"{"location": {"latitude": 36.06, "longitude": 120.38}, "radiusM": 800, "limit": 3}"#,
            r#"{"location": {"latitude": "36.06", "longitude": -1e2}, "radius_m": "800", "limit": 3.0,
                "category": "SPACE_CATEGORY_EV_CHARGING", "kinds": ["CAR_PARK_KIND_GARAGE", 3],
                "maxPriceMinor": "-12", "openNow": true, "stay": {"start": "2026-12-06T08:00:00+08:00",
                "end": "2026-12-06T10:00:00.5Z"}, "includeStale": null}"#,
            r#"{"maxPriceMinor": 0, "kinds": []}"#,
            "{}",
        ];
        for json in nearby {
            let (ours, theirs) = read_both(&pool, &plans, "citypark.v1.FindNearbyRequest", json);
            assert_eq!(
                pb::FindNearbyRequest::decode(ours.as_slice()).unwrap(),
                pb::FindNearbyRequest::decode(theirs.as_slice()).unwrap(),
                "{json}"
            );
        }
        let report = r#"{"report": {"carParkId": "g1", "sequence": "9007199254740993",
            "observedAt": "2026-12-06T08:44:57.239042252Z", "restartSequence": true,
            "snapshot": {"free": [{"category": "SPACE_CATEGORY_STANDARD", "count": 0},
            {"category": 2, "count": 4}]}}}"#;
        let (ours, theirs) = read_both(&pool, &plans, "citypark.v1.ReportRequest", report);
        let ours = pb::ReportRequest::decode(ours.as_slice()).unwrap();
        assert_eq!(ours, pb::ReportRequest::decode(theirs.as_slice()).unwrap());
        assert_eq!(ours.report.unwrap().sequence, 9_007_199_254_740_993);
        let history = r#"{"carParkId": "g1", "step": "300.5s", "from": "2026-12-06T00:00:00Z"}"#;
        let (ours, theirs) = read_both(
            &pool,
            &plans,
            "citypark.v1.GetOccupancyHistoryRequest",
            history,
        );
        assert_eq!(
            pb::GetOccupancyHistoryRequest::decode(ours.as_slice()).unwrap(),
            pb::GetOccupancyHistoryRequest::decode(theirs.as_slice()).unwrap()
        );
    }

    /// The kinds citypark's messages do not use, by their encodings.
    #[test]
    fn every_integer_kind_is_encoded_as_protobuf_encodes_it() {
        let encoded = |kind: Value, json: serde_json::Value| {
            let mut out = Vec::new();
            scalar(&kind, &json, "f", &mut out).map(|()| out)
        };
        use serde_json::json;
        assert_eq!(encoded(Value::Sint32, json!(-1)).unwrap(), [1]);
        assert_eq!(encoded(Value::Sint64, json!("-2")).unwrap(), [3]);
        assert_eq!(
            encoded(Value::Sfixed32, json!(-2)).unwrap(),
            [0xfe, 0xff, 0xff, 0xff]
        );
        assert_eq!(
            encoded(Value::Fixed64, json!("18446744073709551615")).unwrap(),
            [0xff; 8]
        );
        assert_eq!(
            encoded(Value::Uint64, json!(u64::MAX)).unwrap(),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1]
        );
        assert_eq!(
            encoded(Value::Int32, json!(-1)).unwrap().len(),
            10,
            "sign-extended"
        );
        assert_eq!(
            encoded(Value::Float, json!("-Infinity")).unwrap(),
            f32::NEG_INFINITY.to_le_bytes()
        );
        for (kind, json) in [
            (Value::Uint32, json!(-1)),
            (Value::Fixed32, json!(4_294_967_296u64)),
            (Value::Sfixed64, json!("9223372036854775808")),
            (Value::Int64, json!(true)),
        ] {
            assert!(encoded(kind, json.clone()).is_err(), "{json}");
        }
    }

    #[test]
    fn what_is_not_the_message_is_refused_saying_where() {
        let plans = Plans::new(&pool());
        let get = "citypark.v1.GetCarParkRequest";
        let nearby = "citypark.v1.FindNearbyRequest";
        for (name, json, says) in [
            (get, r#"{"idx": "a"}"#, "no field \"idx\""),
            (get, r#"{"id": 5}"#, "id: must be a string"),
            (get, "[]", "must be an object"),
            (get, "{", "EOF"),
            (get, r#"{"id": "a"} x"#, "trailing"),
            (nearby, r#"{"limit": 1.5}"#, "limit: must be an integer"),
            (
                nearby,
                r#"{"limit": 3000000000}"#,
                "limit: must be an integer",
            ),
            (
                nearby,
                r#"{"location": {"latitude": "north"}}"#,
                "location.latitude: must be a number",
            ),
            (
                nearby,
                r#"{"category": "SPACE_CATEGORY_BIKE"}"#,
                "category: \"SPACE_CATEGORY_BIKE\" is not",
            ),
            (
                nearby,
                r#"{"openNow": 1}"#,
                "openNow: must be true or false",
            ),
            (
                nearby,
                r#"{"stay": {"start": "yesterday"}}"#,
                "stay.start: \"yesterday\" is not",
            ),
            (
                nearby,
                r#"{"kinds": "CAR_PARK_KIND_GARAGE"}"#,
                "kinds: must be an array",
            ),
            (
                "citypark.v1.ReportRequest",
                r#"{"report": {"snapshot": {}, "delta": {}}}"#,
                "one of a kind",
            ),
        ] {
            let error = plans
                .read(name, json.as_bytes(), &mut Vec::new())
                .unwrap_err();
            assert!(error.0.contains(says), "{json}: {}", error.0);
        }
    }
}
