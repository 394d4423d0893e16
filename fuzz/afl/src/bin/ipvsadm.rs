//! AFL's entry for the `ipvsadm` target of `xvs-fuzz`.
fn main() {
    afl::fuzz!(|data: &[u8]| xvs_fuzz::ipvsadm(data));
}
