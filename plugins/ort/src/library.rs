//! Finding `libonnxruntime.so`.
//!
//! One zinferd binary runs on whatever ONNX Runtime build the board has (CPU, CUDA, TensorRT), so the library is
//! loaded at run time. The search order is: the `onnxruntime.library` config key, `ORT_DYLIB_PATH`, then
//! [`conventional_paths`]. A candidate qualifies if it is an existing file; the first one wins.

use std::path::{Path, PathBuf};

use crate::OrtError;

/// The library's file name on this platform.
pub const LIBRARY_NAME: &str = "libonnxruntime.so";

/// Where zinferd looks when neither the config nor `ORT_DYLIB_PATH` names a library, in order.
///
/// - next to the executable, and in `../lib/zinfer/` relative to it (packaged installs);
/// - `.ort/<arch>/lib/` under the current directory (a checkout after `scripts/install-onnxruntime.sh`);
/// - `/usr/lib/zinfer/`, `/usr/local/lib/`, `/usr/lib/<arch>-linux-gnu/`, `/usr/lib/` (system installs; JetPack's
///   and distribution packages put the library in one of the last three).
pub fn conventional_paths() -> Vec<PathBuf> {
    let arch = std::env::consts::ARCH;
    let mut paths = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_owned)) {
        paths.push(dir.join(LIBRARY_NAME));
        paths.push(dir.join("../lib/zinfer").join(LIBRARY_NAME));
    }
    paths.push(PathBuf::from(format!(".ort/{arch}/lib")).join(LIBRARY_NAME));
    paths.push(PathBuf::from("/usr/lib/zinfer").join(LIBRARY_NAME));
    paths.push(PathBuf::from("/usr/local/lib").join(LIBRARY_NAME));
    paths.push(PathBuf::from(format!("/usr/lib/{arch}-linux-gnu")).join(LIBRARY_NAME));
    paths.push(PathBuf::from("/usr/lib").join(LIBRARY_NAME));
    paths
}

/// Finds the library: `configured`, then `from_env` (the value of `ORT_DYLIB_PATH`), then [`conventional_paths`].
///
/// An explicitly configured path that does not exist is an error even if a later candidate exists: silently using
/// another build than the one the operator named would be worse than stopping.
pub fn locate(configured: Option<&Path>, from_env: Option<&Path>) -> Result<PathBuf, OrtError> {
    let mut searched = Vec::new();
    for (origin, path) in [("config key onnxruntime.library", configured), ("ORT_DYLIB_PATH", from_env)] {
        match path {
            Some(path) if path.is_file() => return Ok(absolute(path)),
            Some(path) => {
                searched.push(format!("{} (from {origin}): no such file", path.display()));
                return Err(OrtError::LibraryNotFound { searched });
            }
            None => searched.push(format!("{origin}: not set")),
        }
    }
    for path in conventional_paths() {
        if path.is_file() {
            return Ok(absolute(&path));
        }
        searched.push(format!("{}: no such file", path.display()));
    }
    Err(OrtError::LibraryNotFound { searched })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_paths_win_and_missing_ones_are_reported() {
        let dir = std::env::temp_dir().join(format!("zinfer-lib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let lib = dir.join(LIBRARY_NAME);
        std::fs::write(&lib, b"not really a library").expect("write");
        assert_eq!(locate(Some(&lib), None).expect("configured"), lib);
        assert_eq!(locate(None, Some(&lib)).expect("env"), lib);

        let missing = dir.join("nope.so");
        let error = locate(Some(&missing), Some(&lib)).expect_err("configured path must exist");
        let message = error.to_string();
        assert!(message.contains("nope.so") && message.contains("install-onnxruntime.sh"), "{message}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
