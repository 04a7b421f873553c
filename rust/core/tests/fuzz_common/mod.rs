// SPDX-License-Identifier: GPL-2.0
//! What the fuzz-body tests share: the corpus directory of a target, replaying it, and writing
//! seed inputs into it.

use std::path::PathBuf;

/// `rust/core/fuzz/corpus/<target>`.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// Runs `run` over every file of `target`'s corpus (none yet: nothing to replay).
pub fn replay_corpus(target: &str, run: impl Fn(&[u8])) {
    let Ok(dir) = std::fs::read_dir(corpus_dir(target)) else {
        return;
    };
    for entry in dir.flatten() {
        if let Ok(data) = std::fs::read(entry.path()) {
            run(&data);
        }
    }
}

/// Writes `inputs` as `seed-NNN` files into `target`'s corpus.
pub fn write_seeds(target: &str, inputs: &[Vec<u8>]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).expect("mkdir corpus");
    for (i, input) in inputs.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), input).expect("write seed");
    }
}
