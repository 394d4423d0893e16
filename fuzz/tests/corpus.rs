//! Every input of the committed corpus (`fuzz/corpus/TARGET/`) and every crash AFL found
//! (`fuzz/crashes/TARGET/`, kept as regression inputs once fixed) through its target: a
//! regression fails here, in the test command, without AFL.

use std::path::Path;

#[test]
fn corpus_and_crashes_replay_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, target) in xvs_fuzz::TARGETS {
        let mut n = 0;
        for dir in ["corpus", "crashes"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if !path.is_file() || path.file_name().is_some_and(|f| f == "README.md") {
                    continue;
                }
                let data = std::fs::read(&path).unwrap_or_default();
                target(&data);
                n += 1;
            }
        }
        assert!(n > 0, "no corpus for the fuzz target {name}");
    }
}
