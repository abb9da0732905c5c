//! Job file parsing and validation, the request a job builds, and the shipped example jobs.

use std::path::PathBuf;

use serde_json::json;

use super::*;
use crate::protocol::request::ChatRequest;

const TRIAGE: &str = r#"
name = "ticket-triage"
task = "classify"
system = "You label support tickets."
prompt = "Ticket from {{customer}}:\n{{subject}}\n{{ body }}\nAnswer with one label."
max_tokens = 16
temperature = 0.0
output = { labels = ["billing", "bug", "feature_request", "account", "other"], aliases = { "feature request" = "feature_request", "invoice" = "billing" } }
"#;

const EXTRACT: &str = r#"
name = "price extract"
task = "extract"
prompt = "{{text}}"

[output.json_schema]
type = "object"
required = ["price"]
properties = { price = { type = "number" } }
"#;

fn parse(text: &str) -> Result<Job, JobError> {
    Job::parse(text, "jobs/x.toml")
}

fn problems(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn record(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn with_output(output: &str) -> String {
    format!("name = \"j\"\ntask = \"t\"\nprompt = \"{{{{x}}}}\"\n{output}\n")
}

#[test]
fn a_labels_job_gets_the_defaults() {
    let job = parse(TRIAGE).unwrap();
    assert_eq!(job.name, "ticket-triage");
    assert_eq!(job.task, "classify");
    assert_eq!(job.concurrency, 8);
    assert_eq!(job.max_attempts, 3);
    assert_eq!(job.max_tokens, Some(16));
    assert_eq!(job.temperature, Some(0.0));
    assert_eq!(job.source, "jobs/x.toml");
    let fields: Vec<_> = job.prompt.fields().collect();
    assert_eq!(fields, ["customer", "subject", "body"]);
    let OutputRule::Labels(labels) = &job.output else {
        panic!("expected labels");
    };
    assert_eq!(labels.labels().len(), 5);
    assert_eq!(
        job.check_output(" Feature request. "),
        Ok(json!("feature_request"))
    );
    assert_eq!(job.check_output("INVOICE"), Ok(json!("billing")));
}

#[test]
fn a_schema_job_parses_from_toml_tables() {
    let job = parse(EXTRACT).unwrap();
    let OutputRule::JsonSchema(rule) = &job.output else {
        panic!("expected json_schema");
    };
    assert_eq!(rule.name(), "price_extract");
    assert_eq!(rule.schema()["properties"]["price"]["type"], "number");
    assert_eq!(
        job.check_output("{\"price\": \"4.5\"}"),
        Ok(json!({"price": 4.5}))
    );
    assert_eq!(
        job.check_output("{\"price\": 4.5}"),
        Ok(json!({"price": 4.5}))
    );
}

#[test]
fn problems_are_reported_with_file_and_key_path() {
    let cases = [
        (
            with_output("output = { labels = [] }"),
            "jobs/x.toml: output.labels: must not be empty",
        ),
        (
            with_output("output = { labels = [\"a\"], json_schema = { type = \"object\" } }"),
            "jobs/x.toml: output: has both `labels` and `json_schema`",
        ),
        (
            with_output("output = {}"),
            "jobs/x.toml: output: needs `labels = [...]`",
        ),
        (
            with_output(
                "output = { json_schema = { type = \"object\" }, aliases = { a = \"b\" } }",
            ),
            "jobs/x.toml: output.aliases: only with `labels`",
        ),
        (
            with_output("output = { json_schema = { type = \"wobbly\" } }"),
            "jobs/x.toml: output.json_schema: is not a valid JSON Schema at /type: ",
        ),
        (
            with_output(
                "output = { json_schema = { properties = { a = { minimum = \"ten\" } } } }",
            ),
            "jobs/x.toml: output.json_schema: is not a valid JSON Schema at /properties/a/minimum: ",
        ),
        (
            with_output("output = { json_schema = \"object\" }"),
            "jobs/x.toml: output.json_schema: must be a table",
        ),
        (
            with_output("concurrency = 0\noutput = { labels = [\"a\"] }"),
            "jobs/x.toml: concurrency: must be from 1 to 1024, not 0",
        ),
        (
            with_output("concurrency = 5000\noutput = { labels = [\"a\"] }"),
            "jobs/x.toml: concurrency: must be from 1 to 1024, not 5000",
        ),
        (
            with_output("max_attempts = 21\noutput = { labels = [\"a\"] }"),
            "jobs/x.toml: max_attempts: must be from 1 to 20, not 21",
        ),
        (
            with_output("max_tokens = -1\noutput = { labels = [\"a\"] }"),
            "jobs/x.toml: max_tokens: must be a positive integer",
        ),
        (
            with_output("temperature = 2.5\noutput = { labels = [\"a\"] }"),
            "jobs/x.toml: temperature: must be a number from 0 to 2",
        ),
    ];
    for (text, expected) in cases {
        let err = problems(&text);
        assert!(
            err.starts_with(expected),
            "expected {expected:?}, got:\n{err}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
        name = " "
        task = "llm.chat"
        system = ""
        prompt = "Hello {{name"
        concurrency = -3
        max_attempts = 0
        output = { labels = ["a", "A"] }
    "#;
    let err = problems(text);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            "jobs/x.toml: name: must not be empty",
            "jobs/x.toml: task: must be one subject token (as in llm.chat.<task>): no '.', '*', '>' or spaces",
            "jobs/x.toml: system: must not be empty (leave it out instead)",
            "jobs/x.toml: prompt: \"{{\" is never closed by \"}}\" (line 1, column 7)",
            "jobs/x.toml: concurrency: must be from 1 to 1024, not -3",
            "jobs/x.toml: max_attempts: must be from 1 to 20, not 0",
            "jobs/x.toml: output.labels[1]: \"A\" is the same label as output.labels[0] once case and spaces are ignored",
        ]
    );
}

#[test]
fn a_prompt_without_fields_is_refused() {
    let err =
        problems("name = \"j\"\ntask = \"t\"\nprompt = \"Say hi\"\noutput = { labels = [\"a\"] }");
    assert_eq!(
        err,
        "jobs/x.toml: prompt: uses no {{field}}, so every item would send the same prompt"
    );
}

#[test]
fn unknown_keys_and_missing_keys_are_refused_by_the_parser() {
    let err = problems(&format!("{TRIAGE}\ncolour = \"blue\"\n"));
    assert!(err.starts_with("jobs/x.toml: "), "{err}");
    assert!(err.contains("unknown field `colour`"), "{err}");
    let err = problems(&with_output("output = { labels = [\"a\"], strict = true }"));
    assert!(err.contains("unknown field `strict`"), "{err}");
    let err = problems("name = \"j\"\ntask = \"t\"\nprompt = \"{{x}}\"\n");
    assert!(err.contains("output: needs `labels"), "{err}");
    let err = problems(&with_output(
        "concurrency = \"eight\"\noutput = { labels = [\"a\"] }",
    ));
    assert!(err.contains("concurrency"), "{err}");
}

#[test]
fn a_record_missing_a_prompt_field_names_the_line_and_the_field() {
    let job = parse(TRIAGE).unwrap();
    let r = record(json!({"customer": "Acme", "body": "It broke."}));
    let err = job.check_record(42, &r).unwrap_err();
    assert_eq!(err.to_string(), "line 42: field \"subject\" is missing");
    let r = record(json!({"customer": "Acme", "subject": "Down", "body": null, "extra": 1}));
    assert!(job.check_record(1, &r).is_ok());
}

#[test]
fn the_labels_request_is_a_plain_chat_request() {
    let job = parse(TRIAGE).unwrap();
    let r = record(
        json!({"customer": "Acme", "subject": "Double charge", "body": "Refund please", "id": 7}),
    );
    let body = job.request_body(&r).unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        json!({
            "messages": [
                {"role": "system", "content": "You label support tickets."},
                {"role": "user", "content": "Ticket from Acme:\nDouble charge\nRefund please\nAnswer with one label."}
            ],
            "max_tokens": 16,
            "temperature": 0.0
        })
    );
    let parsed = ChatRequest::parse(&body).unwrap();
    assert_eq!(parsed.max_tokens, Some(16));
    assert_eq!(
        job.request_body(&record(json!({"customer": "Acme"})))
            .unwrap_err()
            .field,
        "subject"
    );
}

#[test]
fn the_extraction_request_asks_for_the_schema() {
    let job = parse(EXTRACT).unwrap();
    let body = job
        .request_body(&record(json!({"text": "Tea, 4.50 EUR"})))
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["messages"],
        json!([{"role": "user", "content": "Tea, 4.50 EUR"}])
    );
    assert!(v.get("max_tokens").is_none() && v.get("temperature").is_none());
    assert_eq!(
        v["response_format"],
        json!({
            "type": "json_schema",
            "json_schema": {
                "name": "price_extract",
                "schema": {
                    "type": "object",
                    "required": ["price"],
                    "properties": {"price": {"type": "number"}}
                }
            }
        })
    );
    ChatRequest::parse(&body).unwrap();
}

#[test]
fn the_hash_ignores_layout_and_sees_every_setting() {
    let base = parse(EXTRACT).unwrap().hash();
    assert_eq!(base.len(), 64);
    assert!(base.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(parse(EXTRACT).unwrap().hash(), base, "stable");
    // The same settings written differently: inline table, other key order, a comment.
    let relaid = r#"
        # extraction of prices
        task = "extract"
        name = "price extract"
        prompt = "{{text}}"
        output = { json_schema = { properties = { price = { type = "number" } }, required = ["price"], type = "object" } }
    "#;
    assert_eq!(parse(relaid).unwrap().hash(), base);
    let changed = EXTRACT.replace("type = \"number\"", "type = \"integer\"");
    assert_ne!(parse(&changed).unwrap().hash(), base);
    let changed = EXTRACT.replace("{{text}}", "Price: {{text}}");
    assert_ne!(parse(&changed).unwrap().hash(), base);
}

// --- The example jobs shipped in jobs/ ---

fn jobs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("jobs")
}

fn load_example(name: &str) -> Job {
    Job::load(&jobs_dir().join(name)).unwrap_or_else(|e| panic!("{e}"))
}

/// JSONL records with their line numbers.
fn jsonl(name: &str) -> Vec<(u64, Map<String, Value>)> {
    let text = std::fs::read_to_string(jobs_dir().join(name)).unwrap();
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i as u64 + 1, record(serde_json::from_str(l).unwrap())))
        .collect()
}

/// CSV records (RFC 4180: quoted fields may hold commas, `""` and line breaks) with the line
/// each starts on. Enough for the examples; the runner's input reader is the real one.
fn csv(name: &str) -> Vec<(u64, Map<String, Value>)> {
    let text = std::fs::read_to_string(jobs_dir().join(name)).unwrap();
    let mut rows: Vec<(u64, Vec<String>)> = Vec::new();
    let (mut field, mut row) = (String::new(), Vec::new());
    let (mut quoted, mut line, mut row_line) = (false, 1u64, 1u64);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push((row_line, std::mem::take(&mut row)));
                line += 1;
                row_line = line;
            }
            (_, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push((row_line, row));
    }
    let mut rows = rows.into_iter();
    let (_, header) = rows.next().unwrap();
    rows.map(|(line, values)| {
        assert_eq!(values.len(), header.len(), "{name} line {line}");
        let map = header
            .iter()
            .cloned()
            .zip(values.into_iter().map(Value::String))
            .collect();
        (line, map)
    })
    .collect()
}

#[test]
fn the_example_jobs_load_and_their_inputs_fit_them() {
    let cases = [
        ("ticket-triage.toml", jsonl("tickets.jsonl"), 20),
        ("ticket-triage-deferred.toml", jsonl("tickets.jsonl"), 20),
        ("invoice-extract.toml", csv("invoices.csv"), 12),
        ("contacts-extract.toml", jsonl("contacts.jsonl"), 10),
    ];
    for (job_file, records, count) in cases {
        let job = load_example(job_file);
        assert_eq!(job_file, format!("{}.toml", job.name));
        assert_eq!(records.len(), count, "{job_file}");
        for (line, r) in &records {
            job.check_record(*line, r)
                .unwrap_or_else(|e| panic!("{job_file}: {e}"));
            ChatRequest::parse(&job.request_body(r).unwrap()).unwrap();
        }
    }
    let tickets = jsonl("tickets.jsonl");
    assert_eq!(
        tickets
            .iter()
            .filter(|(_, r)| !r.contains_key("id"))
            .count(),
        1,
        "one ticket shows line-number ids"
    );
    // Multi-line quoted invoice texts: the second record starts well after line 2.
    let invoices = csv("invoices.csv");
    assert_eq!(invoices[0].0, 2);
    assert!(invoices[1].0 > 3);
    assert!(
        invoices
            .iter()
            .all(|(_, r)| r["invoice_text"].as_str().unwrap().contains('\n'))
    );
}

#[test]
fn the_invoice_example_accepts_what_providers_answer() {
    let job = load_example("invoice-extract.toml");
    let gemini = "```json\n{\"invoice_number\": \"RE-77812\", \"issue_date\": \"2024-01-15\", \"total\": \"678.30\", \"currency\": \"EUR\", \"supplier\": {\"name\": \"Müller Elektrotechnik GmbH\", \"address\": \"Hauptstraße 12, 80331 München\"}}\n```";
    let deepseek = "{\"invoice_number\": \"RE-77812\", \"issue_date\": \"2024-01-15\", \"total\": 678.3, \"currency\": \"EUR\", \"supplier\": {\"name\": \"Müller Elektrotechnik GmbH\", \"address\": \"Hauptstraße 12, 80331 München\"}}";
    let a = job.check_output(gemini).unwrap();
    assert_eq!(a, job.check_output(deepseek).unwrap());
    assert_eq!(a["total"], json!(678.3));
    let reason = job
        .check_output(
            &deepseek
                .replace("2024-01-15", "15.01.2024")
                .replace("EUR", "€"),
        )
        .unwrap_err();
    assert!(
        reason.contains("/issue_date") && reason.contains("/currency"),
        "{reason}"
    );
}

#[test]
fn the_contacts_example_allows_nulls() {
    let job = load_example("contacts-extract.toml");
    let answer = r#"{"name": "Luis Ortega", "email": null, "phone": "+34 612 345 678", "company": "Ortega Construcciones"}"#;
    assert!(job.check_output(answer).is_ok());
    let reason = job
        .check_output(
            r#"{"name": "Luis Ortega", "email": "not an email", "phone": null, "company": null}"#,
        )
        .unwrap_err();
    assert!(reason.contains("/email"), "{reason}");
}

#[test]
fn a_toml_error_gives_its_message_and_position_but_never_the_source_text() {
    let secret = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n";
    let err = parse(secret).unwrap_err().to_string();
    assert!(err.starts_with("jobs/x.toml: "), "{err}");
    assert!(err.contains("(line 1, column "), "{err}");
    for quoted in ["root", "/bin/bash", "daemon", "nologin"] {
        assert!(!err.contains(quoted), "quotes {quoted:?}: {err}");
    }
    assert!(!err.contains('\n'), "one line: {err}");
    // A value of the wrong type is named by its key and place, not quoted.
    let err = parse(&with_output(
        "concurrency = \"sk-secret-value\"\noutput = { labels = [\"a\"] }",
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("concurrency"), "{err}");
    assert!(err.contains("line "), "{err}");
    assert!(!err.contains("sk-secret-value"), "{err}");
}

#[test]
fn an_embed_job_has_an_input_and_nothing_of_a_chat_job() {
    let job = parse(
        "name = \"e\"\ntask = \"embed\"\nkind = \"embed\"\ninput = \"{{title}}: {{body}}\"\n",
    )
    .unwrap();
    assert_eq!(job.kind, Kind::Embed);
    assert!(matches!(job.output, OutputRule::Vectors));
    let r = record(json!({"title": "Refunds", "body": "Five days."}));
    assert_eq!(job.embed_input(&r).unwrap(), "Refunds: Five days.");
    assert!(job.check_record(3, &record(json!({"title": "x"}))).is_err());

    let err = problems(
        "name = \"e\"\ntask = \"t\"\nkind = \"embed\"\nprompt = \"{{x}}\"\noutput = { labels = [\"a\"] }",
    );
    assert!(err.contains("prompt: not for kind = \"embed\""), "{err}");
    assert!(err.contains("output: not for kind = \"embed\""), "{err}");
    assert!(err.contains("input: is required"), "{err}");
    let err = problems("name = \"e\"\ntask = \"t\"\nkind = \"vectors\"\ninput = \"{{x}}\"\n");
    assert!(err.contains("kind: `vectors` is not chat | embed"), "{err}");
    let err = problems(&with_output(
        "input = \"{{x}}\"\noutput = { labels = [\"a\"] }",
    ));
    assert!(err.contains("input: only for kind = \"embed\""), "{err}");
}

#[test]
fn a_deferred_job_has_a_deadline_and_its_keys_are_checked() {
    let job = parse(&with_output(
        "output = { labels = [\"a\"] }\nmode = \"deferred\"\ndeadline = \"12h\"\nmax_batch_items = 500",
    ))
    .unwrap();
    let Mode::Deferred(d) = &job.mode else {
        panic!("{:?}", job.mode)
    };
    assert_eq!(d.deadline, std::time::Duration::from_secs(12 * 3600));
    assert_eq!(d.sync_reserve, std::time::Duration::from_secs(3600));
    assert_eq!(d.poll_interval, std::time::Duration::from_secs(30));
    assert_eq!(d.max_batch_items, Some(500));
    assert_eq!(parse(TRIAGE).unwrap().mode, Mode::Sync);

    let err = problems(&with_output(
        "output = { labels = [\"a\"] }\nmode = \"deferred\"\nmax_batch_items = 0\npoll_interval = \"10m\"",
    ));
    assert!(
        err.contains("deadline: is required with mode = \"deferred\""),
        "{err}"
    );
    assert!(
        err.contains("max_batch_items: must be a positive integer"),
        "{err}"
    );
    assert!(err.contains("poll_interval: must be at most 5m"), "{err}");
    let err = problems(&with_output(
        "output = { labels = [\"a\"] }\nmode = \"later\"\ndeadline = \"soon\"",
    ));
    assert!(
        err.contains("mode: `later` is not sync | deferred"),
        "{err}"
    );
    assert!(err.contains("deadline: not a duration"), "{err}");
    let err = problems(&with_output(
        "output = { labels = [\"a\"] }\ndeadline = \"1h\"\nsync_reserve = \"0s\"",
    ));
    assert!(
        err.contains("deadline: only with mode = \"deferred\""),
        "{err}"
    );
    assert!(
        err.contains("sync_reserve: must be more than zero"),
        "{err}"
    );
    let err = problems(
        "name = \"e\"\ntask = \"t\"\nkind = \"embed\"\ninput = \"{{x}}\"\nmode = \"deferred\"\ndeadline = \"1h\"\n",
    );
    assert!(
        err.contains("mode: deferred batches are chat jobs"),
        "{err}"
    );
}
