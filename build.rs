//! Guard: feature `sim` needs `--cfg madsim` for the whole crate graph
//! (`.cargo/config.toml` sets it). Without it madsim compiles as a thin tokio
//! wrapper and the simulator APIs do not exist, which gives confusing errors.
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let sim = std::env::var_os("CARGO_FEATURE_SIM").is_some();
    let madsim_cfg = std::env::var_os("CARGO_CFG_MADSIM").is_some();
    if sim && !madsim_cfg {
        panic!(
            "feature `sim` requires `--cfg madsim` for the whole crate graph: keep \
             .cargo/config.toml's [build] rustflags, and do not override them with a \
             RUSTFLAGS environment variable (or put `--cfg madsim` into it)"
        );
    }
}
