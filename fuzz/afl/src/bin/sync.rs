//! AFL's entry for the `sync` target of `xvs-fuzz`.
fn main() {
    afl::fuzz!(|data: &[u8]| xvs_fuzz::sync(data));
}
