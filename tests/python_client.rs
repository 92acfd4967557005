//! The Python client's test suite (`python/tests`, pytest) against this build's `fhenode`
//! binary: three real `fhenode run` processes on loopback per run, the client's named tensors,
//! weighted means and series, the Flower integration and the examples.
//!
//! It needs a Python with the package's test dependencies: `$FHENODE_PYTHON`, else `python3`.
//! `.ci/run` installs them (`pip install './python[test,flower]'`); where they are missing
//! the test says so and passes, so that `cargo test` works on a machine without Python.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_python_client_suite_passes_against_this_build() {
    let python = std::env::var("FHENODE_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let probe = Command::new(&python)
        .args(["-c", "import numpy, pytest, fhenode"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "skipping the Python client suite: {python} lacks numpy, pytest or the fhenode \
                 package (pip install './python[test,flower]'): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("skipping the Python client suite: cannot run {python}: {e}");
            return;
        }
    }
    let python_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let mut pytest = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&python_dir)
        .env("FHENODE_BIN", env!("CARGO_BIN_EXE_fhenode"))
        .spawn()
        .expect("pytest runs");
    // Every wait in the suite is bounded; this bounds the whole (it takes seconds).
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(status) = pytest.try_wait().expect("pytest can be waited for") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = pytest.kill();
            panic!("the Python client suite ran past 900 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "the Python client suite failed: {status}");
}
