//! AFL's entry for the `state` target of `xvs-fuzz`.
fn main() {
    afl::fuzz!(|data: &[u8]| xvs_fuzz::state(data));
}
