//! A submission to `llm.batch.submit`, read and checked before any batch starts (in
//! `spawn_blocking`: it reads and hashes files): `job` or `job_path`, `items` or `input_path`,
//! paths only under `[batch] input_dir`; then laid out in the batch's own folder.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::record_db;
use crate::batch::input::{Format, Input};
use crate::batch::job::Job;
use crate::batch::runner;
use crate::batch::source;

/// A refused submission: its error kind and message.
pub(super) type Refusal = (&'static str, String);

/// A submission that was read and checked: what the batch is and where its input comes from.
pub(super) struct Prepared {
    pub(super) id: String,
    pub(super) job_text: String,
    pub(super) input: Source,
}

pub(super) enum Source {
    /// `items`, as JSONL text.
    Inline(String),
    /// `input_path`, resolved under `input_dir`.
    File(PathBuf),
}

/// Reads and checks a submission (on a blocking thread): `{job | job_path, items | input_path}`.
/// Paths are read only under `input_dir`; no message quotes what a file holds.
pub(super) fn prepare(input_dir: Option<&Path>, body: &[u8]) -> Result<Prepared, Refusal> {
    let invalid = |m: String| ("invalid_request", m);
    let v: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("body is not JSON: {e}")))?;
    let (job_text, job) = match (v.get("job"), v.get("job_path")) {
        (Some(Value::String(t)), None) => {
            let job = Job::parse(t, "submitted job").map_err(|e| invalid(e.to_string()))?;
            (t.clone(), job)
        }
        (None, Some(Value::String(given))) => {
            let path = source::resolve(input_dir, "job_path", given)
                .map_err(|e| invalid(e.to_string()))?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                invalid(format!("job_path {given:?}: cannot be read ({})", e.kind()))
            })?;
            let job = Job::parse(&text, &format!("job_path {given:?}"))
                .map_err(|e| invalid(e.to_string()))?;
            (text, job)
        }
        _ => {
            return Err(invalid(
                "give `job` (the job file's TOML text) or `job_path`".into(),
            ));
        }
    };
    let (input, input_hash) = match (v.get("items"), v.get("input_path")) {
        (Some(Value::Array(items)), None) => {
            let mut lines = String::new();
            for (i, item) in items.iter().enumerate() {
                if let Value::Object(fields) = item
                    && let Err(e) = job.check_record(i as u64 + 1, fields)
                {
                    return Err(invalid(format!("items: {e}; no batch was started")));
                }
                lines.push_str(&item.to_string());
                lines.push('\n');
            }
            let hash = crate::batch::job::sha256_hex(lines.as_bytes());
            (Source::Inline(lines), hash)
        }
        (None, Some(Value::String(given))) => {
            let path = source::resolve(input_dir, "input_path", given)
                .map_err(|e| invalid(e.to_string()))?;
            let named = |e: &dyn std::fmt::Display| invalid(format!("input_path {given:?}: {e}"));
            Format::of(&path).map_err(|_| {
                invalid(format!(
                    "input_path {given:?}: unknown format; name it .jsonl, .ndjson, .json or .csv"
                ))
            })?;
            runner::check_input(&job, &path).map_err(|e| named(&e))?;
            let hash = Input::hash(&path).map_err(|e| named(&e))?;
            (Source::File(path), hash)
        }
        _ => {
            return Err(invalid(
                "give `items` (an array of records) or `input_path`".into(),
            ));
        }
    };
    Ok(Prepared {
        id: source::batch_id(&job.hash(), &input_hash),
        job_text,
        input,
    })
}

/// The batch's folder (named by its id) and its record, on a blocking thread. Files are
/// replaced whole, so a run of the same batch reading them (another instance sharing the
/// folder) never sees half of one.
pub(super) fn lay_out(db: &Path, dir: &Path, prepared: Prepared) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write_whole(&dir.join("job.toml"), prepared.job_text.as_bytes())?;
    let input = match prepared.input {
        Source::Inline(lines) => {
            let path = dir.join("input.jsonl");
            write_whole(&path, lines.as_bytes())?;
            path
        }
        Source::File(path) => path,
    };
    write_whole(
        &dir.join("input_path"),
        input.display().to_string().as_bytes(),
    )?;
    record_db(db)
        .and_then(|db| {
            db.execute(
                "INSERT OR REPLACE INTO served_batches (id, dir, state) VALUES (?1, ?2, 'running')",
                rusqlite::params![prepared.id, dir.display().to_string()],
            )
        })
        .map_err(|e| format!("cannot record the batch: {e}"))?;
    Ok(())
}

fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("{}.partial", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", path.display())
        })
}
