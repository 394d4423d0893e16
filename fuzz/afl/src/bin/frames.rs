//! AFL's entry for the `frames` target of `xvs-fuzz`.
fn main() {
    afl::fuzz!(|data: &[u8]| xvs_fuzz::frames(data));
}
