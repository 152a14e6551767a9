//! Links the `sandstep` binary with packed relative relocations (`-z pack-relative-relocs`,
//! DT_RELR) where the linker offers them: a position-independent binary keeps its address
//! randomisation, but its relocation table shrinks from about 600 KB to a few KB, which is both
//! file size and memory every start reads. The binary then needs glibc 2.36 or newer (Debian
//! 12), which the package's dependency says (scripts/package.sh).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    // Only the machine's own linker is asked; a cross build keeps the plain relocations.
    let native = std::env::var("HOST").is_ok_and(|h| h == target);
    if native && target.ends_with("-linux-gnu") && linker_packs_relocations() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the system linker (what `cc` runs) knows the option: binutils 2.38 and later.
fn linker_packs_relocations() -> bool {
    Command::new("ld")
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("pack-relative-relocs"))
        .unwrap_or(false)
}
