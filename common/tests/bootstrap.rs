//! Regenerates the checked-in protobuf bindings and fails when they drift from the
//! `.proto` files. Run with `TESSERA_BLESS=1` to rewrite `src/proto/gen/`.
//!
//! The bindings are generated with `protox` (a pure-Rust protobuf compiler), so neither
//! developers nor CI need a system `protoc`.

#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::path::{Path, PathBuf};

fn generate(out_dir: &Path) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let protos = [
        root.join("proto/workload.proto"),
        root.join("proto/tessera.proto"),
    ];
    let includes = [root.join("proto")];
    let fds = protox::compile(&protos, &includes).expect("proto files compile");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out_dir)
        .compile_fds(fds)
        .expect("code generation succeeds");
}

#[test]
fn generated_bindings_are_up_to_date() {
    let checked_in = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/proto/gen");
    let fresh = tempfile::tempdir().unwrap();
    generate(fresh.path());
    let bless = std::env::var_os("TESSERA_BLESS").is_some();
    let mut names: Vec<_> = std::fs::read_dir(fresh.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no bindings generated");
    for name in names {
        let new = std::fs::read_to_string(fresh.path().join(&name)).unwrap();
        let path = checked_in.join(&name);
        if bless {
            std::fs::write(&path, &new).unwrap();
            continue;
        }
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            old == new,
            "{} is stale: run `TESSERA_BLESS=1 cargo test -p common --test bootstrap`",
            path.display()
        );
    }
}
