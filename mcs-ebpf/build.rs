//! Rebuild when bpf-linker changes: it is the linker of this crate, and cargo
//! does not track it.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
