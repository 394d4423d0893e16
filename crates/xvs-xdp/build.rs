//! Compiles the steering XDP program (and, with the `bench` feature, the benchmarks' sink) with
//! clang and leaves the objects in OUT_DIR, where the crate embeds them with `include_bytes!`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    compile(&out, "bpf/xvs.bpf.c", "xvs.bpf.o");
    // The benchmarks' sink, with the `bench` feature only.
    if env::var_os("CARGO_FEATURE_BENCH").is_some() {
        compile(&out, "bpf/xvs_sink.bpf.c", "xvs_sink.bpf.o");
    }
}

fn compile(out: &std::path::Path, src: &str, obj: &str) {
    println!("cargo:rerun-if-changed={src}");
    // The libbpf headers (bpf_helpers.h) come from libbpf-sys, a direct dependency.
    let bpf_include =
        env::var("DEP_BPF_INCLUDE").expect("libbpf-sys exports its include directory");
    let arch_include = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "/usr/include/aarch64-linux-gnu",
        _ => "/usr/include/x86_64-linux-gnu",
    };
    let obj = out.join(obj);
    let status = Command::new("clang")
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I{bpf_include}"))
        .arg(format!("-I{arch_include}"))
        .args(["-c", src, "-o"])
        .arg(&obj)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("clang failed to compile {src}: {s}"),
        Err(e) => {
            panic!("cannot run clang to compile {src} ({e}): install clang (scripts/test.sh does)")
        }
    }
}
