//! A batch job file (docs/contract.md §5): which route to call (`task`), the prompt template that
//! turns one input record into a chat request, how hard to push (`concurrency`, `max_attempts`),
//! and the output rule an answer must pass (`labels` or `json_schema`).
//!
//! Like the config, a job file is read into serde structs that refuse unknown keys and then
//! validated, with every problem reported at once as `file: key.path: reason`. Everything that can
//! be prepared once is prepared here (template split, labels normalised, schema compiled), so the
//! runner only renders, sends and checks.

mod deferred;
mod labels;
mod schema;
mod template;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

pub use deferred::{Deferred, MAX_POLL_INTERVAL, Mode};
pub use labels::{Labels, normalise as normalise_label};
pub use schema::{JsonSchemaRule, coerce, extract_json};
pub use template::{MissingField, Template};

use crate::config::is_token;

const DEFAULT_CONCURRENCY: i64 = 8;
const MAX_CONCURRENCY: i64 = 1024;
const DEFAULT_MAX_ATTEMPTS: i64 = 3;
/// Each attempt is a paid provider call: past this a job is more likely wrong than unlucky.
const MAX_ATTEMPTS: i64 = 20;

/// What a job's items are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A chat request per item, its answer checked against the output rule.
    Chat,
    /// `kind = "embed"`: the rendered `input` of each item embedded (`llm.embed.<task>`), up to a
    /// deployment's `max_inputs` items per provider call; the vector is the output.
    Embed,
}

/// A validated job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The file it came from, for messages.
    pub source: String,
    pub name: String,
    /// The route, as the `<task>` token of `llm.chat.<task>` (or `llm.embed.<task>`).
    pub task: String,
    pub kind: Kind,
    pub system: Option<String>,
    /// The prompt of a chat job, the `input` of an embed job.
    pub prompt: Template,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    /// Items in flight at once, 1..=1024.
    pub concurrency: usize,
    /// Provider calls per item, output retries included, 1..=20.
    pub max_attempts: u32,
    pub output: OutputRule,
    /// `mode`: sync (default) or deferred through a provider's batch API.
    pub mode: Mode,
    hash: String,
}

/// What an answer must be for an item to be `ok`.
#[derive(Debug, Clone)]
pub enum OutputRule {
    /// Classification: one of these labels, after normalisation.
    Labels(Labels),
    /// Extraction: JSON that this schema accepts, after coercion.
    JsonSchema(JsonSchemaRule),
    /// An embed job: the vector is the output; there is no answer to check.
    Vectors,
}

/// Why a job file, a template or an input record was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{file}: cannot read the job file: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// The file is not TOML, or has an unknown key or a value of the wrong type.
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{}", crate::config::Problems(.file, .problems))]
    Invalid {
        file: String,
        /// (key path, reason), in the order found.
        problems: Vec<(String, String)>,
    },
    #[error("{0}")]
    Template(String),
    /// An input record lacks a field the prompt uses (checked before any call is made).
    #[error("line {line}: field \"{field}\" is missing")]
    MissingField { line: u64, field: String },
}

/// Problems found while validating, each with its key path.
#[derive(Debug, Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push((key.into(), reason.into()));
    }
}

/// The job file exactly as written. Counts are read as `i64` so that `0` or `-1` is reported
/// with its key path like any other out-of-range value, rather than as a type error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: String,
    task: String,
    /// `chat` (default) or `embed`.
    kind: Option<String>,
    system: Option<String>,
    prompt: Option<String>,
    /// An embed job's text per item.
    input: Option<String>,
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    concurrency: Option<i64>,
    max_attempts: Option<i64>,
    output: Option<RawOutput>,
    mode: Option<String>,
    deadline: Option<String>,
    sync_reserve: Option<String>,
    poll_interval: Option<String>,
    max_batch_items: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    labels: Option<Vec<String>>,
    /// Other spelling → label.
    aliases: Option<BTreeMap<String, String>>,
    json_schema: Option<Value>,
}

impl Job {
    /// Reads and validates a job file.
    pub fn load(path: &Path) -> Result<Self, JobError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    /// Parses and validates job text; `file` names it in messages.
    pub fn parse(text: &str, file: &str) -> Result<Self, JobError> {
        let parse_error = |e: toml::de::Error| JobError::Parse {
            file: file.to_string(),
            message: toml_message(e, text),
        };
        let raw: RawJob = toml::from_str(text).map_err(parse_error)?;
        let document: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let mut problems = Problems::default();
        let job = validate(raw, file, hash_document(&document), &mut problems);
        match job {
            Some(job) if problems.0.is_empty() => Ok(job),
            _ => Err(JobError::Invalid {
                file: file.to_string(),
                problems: problems.0,
            }),
        }
    }

    /// A SHA-256 hex digest of the job's settings, to tell whether a batch is resumed with the
    /// job it started with. It is taken over the parsed document with its keys sorted, so
    /// comments, layout and key order do not change it; any value that changes does.
    pub fn hash(&self) -> String {
        self.hash.clone()
    }

    /// Checks that `record` (from input line `line`) has every field the prompt uses.
    pub fn check_record(&self, line: u64, record: &Map<String, Value>) -> Result<(), JobError> {
        match self.prompt.missing_field(record) {
            Some(field) => Err(JobError::MissingField {
                line,
                field: field.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// The OpenAI chat request for one record: the system message if any, the rendered prompt
    /// as the user message, the sampling settings, and for extraction a `response_format` that
    /// asks for the schema (providers that cannot enforce it still get a JSON answer to check).
    pub fn request_body(&self, record: &Map<String, Value>) -> Result<Vec<u8>, MissingField> {
        let prompt = self.prompt.render(record)?;
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = &self.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        let mut body = Map::new();
        body.insert("messages".into(), Value::Array(messages));
        if let Some(n) = self.max_tokens {
            body.insert("max_tokens".into(), n.into());
        }
        if let Some(t) = self.temperature {
            body.insert("temperature".into(), t.into());
        }
        if let OutputRule::JsonSchema(rule) = &self.output {
            body.insert(
                "response_format".into(),
                json!({
                    "type": "json_schema",
                    "json_schema": {"name": rule.name(), "schema": rule.schema()}
                }),
            );
        }
        Ok(Value::Object(body).to_string().into_bytes())
    }

    /// The output an answer stands for (the canonical label, or the coerced JSON value), or the
    /// reason it fails the job's rule.
    pub fn check_output(&self, text: &str) -> Result<Value, String> {
        match &self.output {
            OutputRule::Labels(labels) => labels.check(text).map(|l| Value::String(l.to_string())),
            OutputRule::JsonSchema(rule) => rule.check(text),
            OutputRule::Vectors => Err("an embed job has no answer to check".into()),
        }
    }

    /// An embed job's text for one record (its rendered `input`).
    pub fn embed_input(&self, record: &Map<String, Value>) -> Result<String, MissingField> {
        self.prompt.render(record)
    }
}

/// A TOML error as its message and position only. The `toml` crate's own Display quotes the
/// offending source line, and serde's type errors quote the value: neither may reach a reply,
/// since the text may be a file the caller could not otherwise read.
fn toml_message(mut e: toml::de::Error, text: &str) -> String {
    let span = e.span();
    // Without the input, Display is the message plus the key path (`in `concurrency``).
    e.set_input(None);
    let message = redact_quoted(e.to_string().trim_end()).replace('\n', " ");
    match span {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("{message} (line {line}, column {column})")
        }
        None => message,
    }
}

/// `message` with every double-quoted part replaced by `"…"`.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    // Odd parts are inside quotes; an unclosed quote hides the rest.
    let mut inside = true;
    for part in parts {
        if inside {
            out.push_str("\"…\"");
        } else {
            out.push_str(part);
        }
        inside = !inside;
    }
    out
}

/// 1-based line and column (in characters) of byte `at` in `text`.
pub(crate) fn line_column(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn validate(raw: RawJob, file: &str, hash: String, problems: &mut Problems) -> Option<Job> {
    let name = raw.name.trim().to_string();
    if name.is_empty() {
        problems.add("name", "must not be empty");
    }
    if !is_token(&raw.task) {
        problems.add(
            "task",
            "must be one subject token (as in llm.chat.<task>): no '.', '*', '>' or spaces",
        );
    }
    if raw.system.as_deref().is_some_and(|s| s.trim().is_empty()) {
        problems.add("system", "must not be empty (leave it out instead)");
    }
    let kind = match raw.kind.as_deref() {
        None | Some("chat") => Kind::Chat,
        Some("embed") => Kind::Embed,
        Some(other) => {
            problems.add("kind", format!("`{other}` is not chat | embed"));
            Kind::Chat
        }
    };
    let (text, key) = match kind {
        Kind::Chat => {
            if raw.input.is_some() {
                problems.add(
                    "input",
                    "only for kind = \"embed\" (a chat job has a `prompt`)",
                );
            }
            (raw.prompt.as_deref(), "prompt")
        }
        Kind::Embed => {
            for (field, given) in [
                ("prompt", raw.prompt.is_some()),
                ("system", raw.system.is_some()),
                ("max_tokens", raw.max_tokens.is_some()),
                ("temperature", raw.temperature.is_some()),
                ("output", raw.output.is_some()),
            ] {
                if given {
                    problems.add(
                        field,
                        "not for kind = \"embed\" (its `input` is embedded; the vector is the output)",
                    );
                }
            }
            (raw.input.as_deref(), "input")
        }
    };
    let prompt = match text.map(Template::parse) {
        None => {
            problems.add(key, "is required");
            None
        }
        Some(Ok(t)) if t.fields().next().is_none() => {
            let why = format!("uses no {{{{field}}}}, so every item would send the same {key}");
            problems.add(key, why);
            None
        }
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            problems.add(key, e.to_string());
            None
        }
    };
    let max_tokens = raw.max_tokens.and_then(|n| {
        let n = u32::try_from(n).ok().filter(|n| *n > 0);
        if n.is_none() {
            problems.add("max_tokens", "must be a positive integer");
        }
        n
    });
    if let Some(t) = raw.temperature
        && !(0.0..=2.0).contains(&t)
    {
        problems.add("temperature", "must be a number from 0 to 2");
    }
    let concurrency = in_range(
        problems,
        "concurrency",
        raw.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
        MAX_CONCURRENCY,
    );
    let max_attempts = in_range(
        problems,
        "max_attempts",
        raw.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
        MAX_ATTEMPTS,
    );
    let output = match (kind, raw.output) {
        (Kind::Embed, _) => Some(OutputRule::Vectors),
        (Kind::Chat, Some(output)) => validate_output(output, &name, problems),
        (Kind::Chat, None) => {
            problems.add(
                "output",
                "needs `labels = [...]` (classification) or `json_schema = {...}` (extraction)",
            );
            None
        }
    };
    let mode = deferred::RawMode {
        mode: raw.mode,
        deadline: raw.deadline,
        sync_reserve: raw.sync_reserve,
        poll_interval: raw.poll_interval,
        max_batch_items: raw.max_batch_items,
    }
    .validate(problems);
    if kind == Kind::Embed && mode != Mode::Sync {
        problems.add(
            "mode",
            "deferred batches are chat jobs, not kind = \"embed\"",
        );
    }
    Some(Job {
        source: file.to_string(),
        name,
        task: raw.task,
        kind,
        system: raw.system,
        prompt: prompt?,
        max_tokens,
        temperature: raw.temperature,
        concurrency: usize::try_from(concurrency).ok()?,
        max_attempts: u32::try_from(max_attempts).ok()?,
        output: output?,
        mode,
        hash,
    })
}

/// `value` if it is in `1..=max`; else a problem (and the value, which is never used then).
fn in_range(problems: &mut Problems, key: &str, value: i64, max: i64) -> i64 {
    if !(1..=max).contains(&value) {
        problems.add(key, format!("must be from 1 to {max}, not {value}"));
    }
    value
}

fn validate_output(raw: RawOutput, job_name: &str, problems: &mut Problems) -> Option<OutputRule> {
    match (raw.labels, raw.json_schema) {
        (Some(labels), None) => Some(OutputRule::Labels(Labels::new(
            labels,
            raw.aliases.unwrap_or_default(),
            problems,
        ))),
        (None, Some(schema)) => {
            if raw.aliases.is_some() {
                problems.add("output.aliases", "only with `labels`");
            }
            JsonSchemaRule::new(schema, job_name, problems).map(OutputRule::JsonSchema)
        }
        (Some(_), Some(_)) => {
            problems.add(
                "output",
                "has both `labels` and `json_schema`: a job has one output rule",
            );
            None
        }
        (None, None) => {
            problems.add(
                "output",
                "needs `labels = [...]` (classification) or `json_schema = {...}` (extraction)",
            );
            None
        }
    }
}

fn hash_document(document: &toml::Table) -> String {
    let mut canonical = String::new();
    write_canonical_table(document, &mut canonical);
    sha256_hex(canonical.as_bytes())
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// One text per document whatever its layout: JSON-like, keys sorted, floats in Rust's
/// shortest round-trip form.
fn write_canonical(value: &toml::Value, out: &mut String) {
    match value {
        toml::Value::String(s) => out.push_str(&Value::from(s.as_str()).to_string()),
        toml::Value::Integer(i) => out.push_str(&i.to_string()),
        toml::Value::Float(f) => out.push_str(&format!("{f:?}")),
        toml::Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        toml::Value::Datetime(d) => out.push_str(&Value::from(d.to_string()).to_string()),
        toml::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        toml::Value::Table(table) => write_canonical_table(table, out),
    }
}

fn write_canonical_table(table: &toml::Table, out: &mut String) {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::from(key.as_str()).to_string());
        out.push(':');
        write_canonical(value, out);
    }
    out.push('}');
}

#[cfg(test)]
mod tests;
