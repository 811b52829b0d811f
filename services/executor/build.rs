//! Links `berth-monitor` statically (glibc, not position-independent), the other
//! binaries as usual. One monitor runs per container for its whole life, so what it maps
//! counts once per container: dynamically linked, ld.so and libc.so alone map more than
//! 1 MB of it, and relocating a PIE dirties its pointer tables at every start. Static and
//! not PIE, it maps only its own pages and relocates nothing (it is also the container's
//! init, which then needs no loader either).
//!
//! `-C target-feature=+crt-static` would do the same, but only for a whole build: it
//! breaks proc-macros unless `--target` is given. Here rustc keeps asking for the
//! shared C libraries (`-lc`, `-lgcc_s`, ...) and this script points those names, for
//! this binary alone, at linker scripts that name the static archives instead.
//! `BERTH_MONITOR_DYNAMIC=1` (or a toolchain without `libc.a`) keeps it dynamic.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BERTH_MONITOR_DYNAMIC");
    println!("cargo:rerun-if-env-changed=CC");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    // Every container start copies the monitor into a memfd to be its init: without the
    // line tables (80 of its 83 MB) that copy is a few MB. Symbols stay for backtraces.
    if var("CARGO_CFG_TARGET_OS") == "linux" {
        println!("cargo:rustc-link-arg-bin=berth-monitor=-Wl,--strip-debug");
    }
    if std::env::var_os("BERTH_MONITOR_DYNAMIC").is_some_and(|v| v != "0") {
        return;
    }
    // Only glibc on Linux links this way; crt-static builds are static already.
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("CARGO_CFG_TARGET_FEATURE")
            .split(',')
            .any(|f| f == "crt-static")
    {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let find = |name: &str| -> Option<PathBuf> {
        let out = Command::new(&cc)
            .arg(format!("-print-file-name={name}"))
            .output()
            .ok()?;
        let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
        // The compiler echoes the bare name for a file it does not have.
        (path.is_absolute() && path.is_file()).then_some(path)
    };
    let (Some(libc), Some(libgcc), Some(libgcc_eh)) =
        (find("libc.a"), find("libgcc.a"), find("libgcc_eh.a"))
    else {
        println!(
            "cargo:warning=berth-monitor is linked dynamically: {cc} has no static libc/libgcc \
             (install glibc's static libraries, e.g. Debian's libc6-dev or Fedora's glibc-static)"
        );
        return;
    };
    let Some(out) = std::env::var_os("OUT_DIR") else {
        return;
    };
    let dir = Path::new(&out).join("static-libs");
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let group = |paths: &[&Path]| {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        format!("GROUP ( {} )\n", names.join(" "))
    };
    let mut scripts = vec![
        ("gcc_s", group(&[&libgcc_eh, &libgcc])),
        ("c", group(&[&libc, &libgcc_eh, &libgcc])),
    ];
    // glibc 2.34 and later keep these as empty archives; older ones have real code.
    for name in ["m", "pthread", "dl", "rt", "util"] {
        let archive = find(&format!("lib{name}.a")).unwrap_or_else(|| libc.clone());
        scripts.push((name, group(&[&archive])));
    }
    for (name, text) in scripts {
        if std::fs::write(dir.join(format!("lib{name}.so")), text).is_err() {
            return;
        }
    }
    for arg in ["-static", "-no-pie"] {
        println!("cargo:rustc-link-arg-bin=berth-monitor={arg}");
    }
    println!("cargo:rustc-link-arg-bin=berth-monitor=-L{}", dir.display());
}
