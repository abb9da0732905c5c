//! Where a batch submitted over NATS comes from (docs/contract.md §8): the job text and the input
//! records, inline or as files. Files are read only under `[batch] input_dir`: a path is resolved
//! against that folder, `..` that climbs out is refused before the filesystem is touched, and the
//! canonical path (symlinks followed) must still lie inside it. Without `input_dir` no path is
//! accepted. A refusal names the path as given and why, never what the file holds.
//!
//! A submitted batch is known by its content: the id is a hash of the job's settings and of the
//! input's bytes, so the same job over the same input is the same batch, however it was sent.

use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

/// Why a path in a submission is not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {given:?}: {reason}")]
pub struct Refused {
    /// `job_path` or `input_path`.
    pub field: &'static str,
    /// The path as the caller wrote it.
    pub given: String,
    pub reason: String,
}

/// The file `given` names under `input_dir` (canonical), or why it may not be read.
pub fn resolve(
    input_dir: Option<&Path>,
    field: &'static str,
    given: &str,
) -> Result<PathBuf, Refused> {
    let refuse = |reason: &str| Refused {
        field,
        given: given.to_string(),
        reason: reason.to_string(),
    };
    let Some(dir) = input_dir else {
        return Err(refuse(
            "this server reads no files ([batch] input_dir is not set): send the job as `job` \
             and the records as `items`",
        ));
    };
    if given.is_empty() {
        return Err(refuse("is empty"));
    }
    let Some(lexical) = normalise(&dir.join(given)) else {
        return Err(refuse("is outside [batch] input_dir"));
    };
    if !lexical.starts_with(dir) {
        return Err(refuse("is outside [batch] input_dir"));
    }
    // Only now is the filesystem asked, and only about paths inside the folder.
    let canonical = std::fs::canonicalize(&lexical)
        .map_err(|_| refuse("no such file under [batch] input_dir"))?;
    if !canonical.starts_with(dir) {
        return Err(refuse(
            "leads outside [batch] input_dir (through a symlink)",
        ));
    }
    if !canonical.is_file() {
        return Err(refuse("is not a file"));
    }
    Ok(canonical)
}

/// `path` with `.` and `..` taken out without asking the filesystem; `None` when `..` climbs
/// above the root.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Prefix(_) | Component::RootDir | Component::Normal(_) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() {
                    return None;
                }
            }
        }
    }
    Some(out)
}

/// The id of a batch by its content: the job's settings hash and its input's bytes hash.
pub fn batch_id(job_hash: &str, input_hash: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"switchyard batch v1\0");
    hasher.update(job_hash.as_bytes());
    hasher.update([0u8]);
    hasher.update(input_hash.as_bytes());
    let mut id = format!("{:x}", hasher.finalize());
    id.truncate(16);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("inputs");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.jsonl"), "{}\n").unwrap();
        std::fs::write(dir.join("sub/b.jsonl"), "{}\n").unwrap();
        std::fs::write(root.path().join("secret.jsonl"), "root:x:0:0\n").unwrap();
        let dir = std::fs::canonicalize(dir).unwrap();
        (root, dir)
    }

    #[test]
    fn paths_inside_the_folder_resolve() {
        let (_root, dir) = setup();
        let d = Some(dir.as_path());
        assert_eq!(
            resolve(d, "input_path", "a.jsonl").unwrap(),
            dir.join("a.jsonl")
        );
        assert_eq!(
            resolve(d, "input_path", "sub/../sub/./b.jsonl").unwrap(),
            dir.join("sub/b.jsonl")
        );
        let absolute = dir.join("a.jsonl").display().to_string();
        assert_eq!(
            resolve(d, "input_path", &absolute).unwrap(),
            dir.join("a.jsonl")
        );
    }

    #[test]
    fn paths_that_lead_out_are_refused_with_the_path_as_given() {
        let (root, dir) = setup();
        let d = Some(dir.as_path());
        for given in [
            "../secret.jsonl",
            "/etc/passwd",
            "sub/../../secret.jsonl",
            "/../etc",
        ] {
            let e = resolve(d, "input_path", given).unwrap_err();
            assert_eq!(e.given, given);
            assert!(e.reason.contains("outside"), "{given}: {e}");
            assert!(e.to_string().contains(given), "{e}");
        }
        std::os::unix::fs::symlink(root.path().join("secret.jsonl"), dir.join("link.jsonl"))
            .unwrap();
        let e = resolve(d, "input_path", "link.jsonl").unwrap_err();
        assert!(e.reason.contains("symlink"), "{e}");
        let e = resolve(d, "job_path", "missing.toml").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("job_path \"missing.toml\": no such file"),
            "{e}"
        );
        assert!(
            resolve(d, "input_path", "sub")
                .unwrap_err()
                .reason
                .contains("not a file")
        );
        assert!(resolve(d, "input_path", "").is_err());
    }

    #[test]
    fn without_an_input_dir_every_path_is_refused() {
        let (_root, dir) = setup();
        let inside = dir.join("a.jsonl").display().to_string();
        let e = resolve(None, "input_path", &inside).unwrap_err();
        assert!(e.reason.contains("input_dir is not set"), "{e}");
    }

    #[test]
    fn batch_ids_follow_the_content() {
        let id = batch_id("job", "input");
        assert_eq!(id.len(), 16);
        assert_eq!(id, batch_id("job", "input"));
        assert_ne!(id, batch_id("job", "other"));
        assert_ne!(id, batch_id("other", "input"));
    }
}
