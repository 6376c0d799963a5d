//! Fails when the Python client's checked-in bindings (`clients/python/tessera_tasks/_proto/`)
//! are stale against `common/proto/tessera.proto`: regenerate them with
//! `python3 clients/python/tools/generate.py`.
//!
//! Python's generated module embeds the compiled `.proto` file as a serialized
//! `FileDescriptorProto` (its `AddSerializedFile(b'...')` literal), which is everything the
//! message classes are built from at import time. The test compiles the `.proto` file with
//! `protox` (pure Rust, no `protoc`) and compares the two descriptors, after removing only
//! what the Python generator leaves out by design (source locations and JSON names) and
//! the file name (the bindings compile it under their package path). The gRPC module and
//! the type stubs are generated beside it; the methods they name and the messages' fields
//! are checked against the same descriptor. Nothing here is skipped: a missing or
//! unreadable file fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use prost::Message as _;
use prost_types::{DescriptorProto, FileDescriptorProto};

/// The name the bindings compile the file under (see tools/generate.py).
const PYTHON_PROTO_NAME: &str = "tessera_tasks/_proto/tessera.proto";
const REGENERATE: &str = "run `python3 clients/python/tools/generate.py`";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn generated(name: &str) -> String {
    let path = repo()
        .join("clients/python/tessera_tasks/_proto")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; {REGENERATE}", path.display()))
}

/// The descriptor of common/proto/tessera.proto as protox compiles it.
fn compiled() -> FileDescriptorProto {
    let dir = repo().join("common/proto");
    let set = protox::compile([dir.join("tessera.proto")], [&dir]).expect("tessera.proto compiles");
    set.file
        .into_iter()
        .find(|f| f.name() == "tessera.proto")
        .expect("tessera.proto in the compiled set")
}

/// Decodes the body of a Python bytes literal as protoc's Python generator writes it
/// (printable ASCII, `\xNN`, octal and the one-letter escapes).
fn python_bytes(lit: &str) -> Vec<u8> {
    let b = lit.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let e = *b.get(i + 1).expect("escape at the end of the literal");
        i += 2;
        match e {
            b'x' => {
                let hex = std::str::from_utf8(&b[i..i + 2]).unwrap();
                out.push(u8::from_str_radix(hex, 16).expect("\\xNN"));
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match b.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(u8::try_from(v).expect("octal escape fits a byte"));
            }
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'v' => out.push(0x0b),
            b'\\' | b'\'' | b'"' => out.push(e),
            other => panic!("unexpected escape \\{}", char::from(other)),
        }
    }
    out
}

/// The descriptor embedded in tessera_pb2.py.
fn embedded() -> FileDescriptorProto {
    let py = generated("tessera_pb2.py");
    let start_marker = "AddSerializedFile(b'";
    let mut found = py.match_indices(start_marker);
    let (start, _) = found
        .next()
        .unwrap_or_else(|| panic!("tessera_pb2.py embeds no descriptor; {REGENERATE}"));
    assert!(
        found.next().is_none(),
        "tessera_pb2.py embeds several descriptors"
    );
    let body = &py[start + start_marker.len()..];
    // The literal ends at the first quote that is not escaped.
    let mut end = None;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '\'' => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let lit = &body[..end.expect("the descriptor literal is closed")];
    FileDescriptorProto::decode(python_bytes(lit).as_slice()).unwrap_or_else(|e| {
        panic!("tessera_pb2.py's descriptor does not decode ({e}); {REGENERATE}")
    })
}

fn clear_json_names(messages: &mut [DescriptorProto]) {
    for m in messages {
        for f in m.field.iter_mut().chain(m.extension.iter_mut()) {
            f.json_name = None;
        }
        clear_json_names(&mut m.nested_type);
    }
}

/// What the comparison ignores: source locations and JSON names (the Python generator
/// never embeds them), and the file name.
fn normalized(mut f: FileDescriptorProto) -> FileDescriptorProto {
    f.name = Some(PYTHON_PROTO_NAME.to_owned());
    f.source_code_info = None;
    clear_json_names(&mut f.message_type);
    for e in &mut f.extension {
        e.json_name = None;
    }
    f
}

/// "Message.field" for every field, and "Service/Method" for every method: a readable
/// account of what differs.
fn outline(f: &FileDescriptorProto) -> BTreeSet<String> {
    fn walk(prefix: &str, ms: &[DescriptorProto], out: &mut BTreeSet<String>) {
        for m in ms {
            let name = format!("{prefix}{}", m.name());
            out.insert(name.clone());
            for fd in &m.field {
                out.insert(format!("{name}.{} = {}", fd.name(), fd.number()));
            }
            walk(&format!("{name}."), &m.nested_type, out);
        }
    }
    let mut out = BTreeSet::new();
    walk("", &f.message_type, &mut out);
    for s in &f.service {
        for m in &s.method {
            out.insert(format!("{}/{}", s.name(), m.name()));
        }
    }
    out
}

#[test]
fn python_message_bindings_match_the_proto() {
    let py = embedded();
    assert_eq!(
        py.name(),
        PYTHON_PROTO_NAME,
        "tessera_pb2.py was not generated by tools/generate.py; {REGENERATE}"
    );
    assert!(!py.message_type.is_empty() && !py.service.is_empty());
    let (py, proto) = (normalized(py), normalized(compiled()));
    if py != proto {
        let (a, b) = (outline(&py), outline(&proto));
        let missing: Vec<_> = b.difference(&a).collect();
        let extra: Vec<_> = a.difference(&b).collect();
        panic!(
            "clients/python/tessera_tasks/_proto/tessera_pb2.py is stale against \
             common/proto/tessera.proto; {REGENERATE}\n\
             only in the .proto: {missing:?}\nonly in the bindings: {extra:?}\n\
             (empty lists: an option, a type or a label differs)"
        );
    }
}

#[test]
fn python_grpc_bindings_name_every_method_of_the_proto() {
    let proto = compiled();
    let package = proto.package();
    let want: BTreeSet<String> = proto
        .service
        .iter()
        .flat_map(|s| {
            s.method
                .iter()
                .map(move |m| format!("/{package}.{}/{}", s.name(), m.name()))
        })
        .collect();
    let grpc = generated("tessera_pb2_grpc.py");
    let prefix = format!("'/{package}.");
    let have: BTreeSet<String> = grpc
        .match_indices(&prefix)
        .map(|(i, _)| {
            let rest = &grpc[i + 1..];
            rest[..rest.find('\'').expect("closing quote")].to_owned()
        })
        .collect();
    assert!(want.iter().any(|m| m.ends_with("WorkloadTasks/BeginTask")));
    assert_eq!(have, want, "tessera_pb2_grpc.py is stale; {REGENERATE}");
}

#[test]
fn python_type_stubs_list_every_field_of_the_proto() {
    let proto = compiled();
    let pyi = generated("tessera_pb2.pyi");
    let mut have = BTreeSet::new();
    let mut lines = pyi.lines();
    while let Some(line) = lines.next() {
        let Some(class) = line
            .strip_prefix("class ")
            .and_then(|l| l.strip_suffix("(_message.Message):"))
        else {
            continue;
        };
        let slots = lines.next().unwrap_or_default().trim();
        let fields = slots
            .strip_prefix("__slots__ = (")
            .unwrap_or_else(|| panic!("{class}: no __slots__ line: {slots}"));
        let names: Vec<&str> = fields.split('"').skip(1).step_by(2).collect();
        have.insert(format!("{class}({})", names.join(",")));
    }
    let want: BTreeSet<String> = proto
        .message_type
        .iter()
        .map(|m| {
            let names: Vec<&str> = m.field.iter().map(|f| f.name()).collect();
            format!("{}({})", m.name(), names.join(","))
        })
        .collect();
    assert_eq!(have, want, "tessera_pb2.pyi is stale; {REGENERATE}");
}
