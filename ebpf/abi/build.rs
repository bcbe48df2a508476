//! Compiles seam's C eBPF programs with clang into OUT_DIR; `objects` embeds them for the daemons.

use std::path::{Path, PathBuf};
use std::process::Command;

fn multiarch_include() -> Option<String> {
    let out = Command::new("gcc").arg("-print-multiarch").output().ok()?;
    let arch = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!arch.is_empty()).then(|| format!("/usr/include/{arch}"))
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    let ebpf = manifest.join("..");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets this"));
    let include = ebpf.join("include");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_string());

    for entry in std::fs::read_dir(&include).expect("ebpf/include exists") {
        let path = entry.expect("readable").path();
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=SEAM_BENCH_CAPTURE_STAGE");
    println!("cargo:rerun-if-env-changed=SEAM_BENCH_PROP_STAGE");
    let stages = bench_stages();

    // Each object is loaded on its own, so a program one kernel rejects cannot sink the others.
    let objects: &[&str] = &["capture", "ctxprop"];
    for name in objects {
        let src = ebpf.join("src").join(format!("{name}.bpf.c"));
        println!("cargo:rerun-if-changed={}", src.display());
        compile(
            &clang,
            &src,
            &include,
            &stages,
            &out.join(format!("{name}.bpf.o")),
        );
    }
}

/// Benchmark builds (bench/floor.sh) stop programs part way, to measure what each step costs:
/// SEAM_BENCH_CAPTURE_STAGE `hooks` makes the capture's socket programs return at once, `lookup`
/// return after the target and connection lookups, `copy` write no ring record;
/// SEAM_BENCH_PROP_STAGE `pass` makes ctxprop's sk_msg program pass every send untouched, `copy`
/// return once the head is copied, `scan` once it is framed, `choose` report a chosen context
/// without inserting the header. Unset in every other build. Returns the compiler's -D flags.
fn bench_stages() -> [String; 2] {
    let stage = |var: &str, names: &[&str]| match std::env::var(var).as_deref() {
        Err(_) | Ok("") => 0,
        Ok(name) => match names.iter().position(|n| *n == name) {
            Some(i) => i + 1,
            None => panic!("{var} is one of {names:?}, not {name:?}"),
        },
    };
    [
        format!(
            "-DSEAM_BENCH_CAPTURE_STAGE={}",
            stage("SEAM_BENCH_CAPTURE_STAGE", &["hooks", "lookup", "copy"])
        ),
        format!(
            "-DSEAM_BENCH_PROP_STAGE={}",
            stage("SEAM_BENCH_PROP_STAGE", &["pass", "copy", "scan", "choose"])
        ),
    ]
}

fn compile(clang: &str, src: &Path, include: &Path, stages: &[String], obj: &Path) {
    let mut cmd = Command::new(clang);
    cmd.args([
        "-O2",
        "-g",
        "-target",
        "bpf",
        "-D__TARGET_ARCH_x86",
        "-Wall",
        "-Werror",
    ])
    .args(stages)
    .arg("-I")
    .arg(include);
    if let Some(dir) = multiarch_include() {
        cmd.arg("-I").arg(dir);
    }
    cmd.arg("-c").arg(src).arg("-o").arg(obj);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {clang} (install clang and libbpf-dev): {e}"));
    assert!(status.success(), "{clang} failed on {}", src.display());
}
