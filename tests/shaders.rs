//! Every WGSL file in `shaders/` parses and validates with naga (no GPU needed), against baseline
//! capabilities only: no f16, no subgroups, no float atomics, so that software Vulkan runs them.

use std::path::Path;

fn validate(name: &str, source: &str) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: WGSL parse error:\n{}", e.emit_to_string(source)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{name}: validation error:\n{}", e.emit_to_string(source)));
    assert!(
        module
            .entry_points
            .iter()
            .all(|ep| ep.stage == naga::ShaderStage::Compute),
        "{name}: only compute entry points belong in shaders/"
    );
    assert!(!module.entry_points.is_empty(), "{name}: no entry point");
}

/// The file as the crate compiles it: each leading line `// requires: lib/<name>.wgsl` puts that library
/// file in front, in the order listed (the rule of `recgoat_core::gpu::SHADERS`).
fn compose(p: &Path) -> String {
    let src = std::fs::read_to_string(p).expect("readable shader");
    let libs: String = src
        .lines()
        .map_while(|l| l.strip_prefix("// requires: "))
        .map(|lib| {
            let lib_path = p.parent().expect("shaders/").join(lib.trim());
            std::fs::read_to_string(&lib_path)
                .unwrap_or_else(|e| panic!("{}: {e}", lib_path.display()))
        })
        .collect();
    libs + &src
}

#[test]
fn every_shader_file_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("shaders/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no .wgsl files in {}", dir.display());
    for p in &names {
        validate(&p.display().to_string(), &compose(p));
    }
}

#[test]
fn a_broken_shader_is_caught() {
    // the check itself must be able to fail: a type error and a use of an f16 (not baseline)
    let bad = "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }";
    assert!(std::panic::catch_unwind(|| validate("bad", bad)).is_err());
    let f16 = "enable f16;\n@compute @workgroup_size(1) fn main() { let x: f16 = 1.0h; }";
    assert!(std::panic::catch_unwind(|| validate("f16", f16)).is_err());
}

#[cfg(feature = "gpu")]
#[test]
fn every_shader_file_is_compiled_into_the_crate() {
    // the crate's list and the folder agree, so no file escapes validation or goes unused
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for (name, src) in recgoat_core::gpu::SHADERS {
        assert_eq!(&compose(&dir.join(name)), src, "{name}");
    }
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "wgsl")
        })
        .count();
    assert_eq!(files, recgoat_core::gpu::SHADERS.len());
}
