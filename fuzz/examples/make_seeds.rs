//! Writes the seed corpus, `fuzz/seeds/<target>/<name>`, from
//! `tallyhouse_fuzz::seeds()` (deterministic): `cargo run --example make_seeds`
//! in `fuzz/`. The bad-input test in `services/evidence` checks that the
//! committed files are exactly these.

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for seed in tallyhouse_fuzz::seeds() {
        let dir = root.join(seed.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(seed.name), &seed.bytes)?;
        println!("seeds/{}/{} ({} bytes)", seed.target, seed.name, seed.bytes.len());
    }
    Ok(())
}
