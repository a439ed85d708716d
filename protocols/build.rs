//! Generates the message and ttrpc code for `proto/agent.proto` into OUT_DIR.
//! ttrpc-codegen parses the .proto in Rust, so no `protoc` is needed.

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    println!("cargo:rerun-if-changed=proto/agent.proto");
    Codegen::new()
        .out_dir(&out_dir)
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating the agent API from proto/agent.proto");

    // The generated files carry inner attributes (`#![allow(..)]`), which
    // `include!` cannot take; lib.rs sets the same allowances on the modules.
    for file in ["agent.rs", "agent_ttrpc.rs"] {
        let path = std::path::Path::new(&out_dir).join(file);
        let text = std::fs::read_to_string(&path).expect("reading generated code");
        let kept: String = text
            .lines()
            .filter(|line| !line.starts_with("#![") && !line.starts_with("//!"))
            .flat_map(|line| [line, "\n"])
            .collect();
        std::fs::write(&path, kept).expect("writing generated code");
    }
}
