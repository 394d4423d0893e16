//! AFL's entry for the `control` target of `xvs-fuzz`.
fn main() {
    afl::fuzz!(|data: &[u8]| xvs_fuzz::control(data));
}
