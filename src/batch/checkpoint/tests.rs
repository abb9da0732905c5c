use super::*;
use serde_json::json;

const JOB: &str = "classify";

pub(super) fn item(line: u64) -> ItemResult {
    let ok = !line.is_multiple_of(5);
    ItemResult {
        line,
        item_id: format!("item-{line}"),
        status: if ok { Status::Ok } else { Status::Failed },
        output: ok.then(|| json!({"label": "spam", "line": line})),
        raw: ok.then(|| format!("spam {line}")),
        deployment: (!line.is_multiple_of(7)).then(|| format!("d{}", line % 3)),
        attempts: 1 + (line % 3) as u32,
        tokens: 10,
        cost_usd: 0.001,
        error: (!ok).then(|| "label not in the list".to_string()),
        via: if line.is_multiple_of(2) {
            Via::Batch
        } else {
            Via::Sync
        },
    }
}

pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
    pub(super) input: PathBuf,
    pub(super) id: String,
}

impl Fixture {
    pub(super) fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{}\n").unwrap();
        let id = Checkpoint::batch_id_for(JOB, &input);
        Fixture { dir, input, id }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("checkpoints.db")
    }

    pub(super) fn open(&self) -> Checkpoint {
        Checkpoint::open(self.db()).unwrap()
    }

    pub(super) fn begin(
        &self,
        cp: &Checkpoint,
        job_hash: &str,
        input_hash: &str,
        restart: bool,
    ) -> Result<Resume, CheckpointError> {
        cp.begin(&self.id, JOB, job_hash, &self.input, input_hash, restart)
    }
}

#[test]
fn a_reopened_batch_resumes_with_its_finished_lines() {
    let f = Fixture::new();
    let cp = f.open();
    let resume = f.begin(&cp, "j1", "i1", false).unwrap();
    assert!(resume.fresh);
    assert!(resume.done.is_empty());
    let writer = cp.writer(&f.id).unwrap();
    // Four runner threads share the writer, as concurrent calls would.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let writer = &writer;
            s.spawn(move || {
                for i in 0..250 {
                    writer.record(item(1 + t * 250 + i)).unwrap();
                }
            });
        }
    });
    writer.close().unwrap();
    drop(cp);

    let cp = f.open();
    let resume = f.begin(&cp, "j1", "i1", false).unwrap();
    assert!(!resume.fresh);
    assert_eq!(resume.done, (1..=1000).collect::<HashSet<u64>>());
}

#[test]
fn a_changed_job_or_input_needs_restart() {
    let f = Fixture::new();
    let cp = f.open();
    f.begin(&cp, "j1", "i1", false).unwrap();
    let writer = cp.writer(&f.id).unwrap();
    for line in 1..=10 {
        writer.record(item(line)).unwrap();
    }
    writer.close().unwrap();

    let err = f.begin(&cp, "j2", "i1", false).unwrap_err();
    assert!(matches!(err, CheckpointError::Changed { what: "job", .. }));
    assert!(err.to_string().contains("--restart"), "{err}");
    assert!(err.to_string().contains(&f.id), "{err}");
    let err = f.begin(&cp, "j1", "i2", false).unwrap_err();
    assert!(matches!(
        err,
        CheckpointError::Changed { what: "input", .. }
    ));
    // A refused begin changed nothing.
    assert_eq!(f.begin(&cp, "j1", "i1", false).unwrap().done.len(), 10);

    let resume = f.begin(&cp, "j2", "i1", true).unwrap();
    assert!(resume.fresh);
    assert!(resume.done.is_empty());
    assert_eq!(cp.counts(&f.id).unwrap(), Counts::default());
    // The new hashes are now the batch's own.
    let resume = f.begin(&cp, "j2", "i1", false).unwrap();
    assert!(!resume.fresh);
}

#[test]
fn items_come_back_in_line_order() {
    let f = Fixture::new();
    let cp = f.open();
    f.begin(&cp, "j", "i", false).unwrap();
    let writer = cp.writer(&f.id).unwrap();
    // Finished out of order, as concurrent items do, and more than one page.
    let mut lines: Vec<u64> = (1..=1300).collect();
    lines.reverse();
    lines.swap(3, 700);
    for &line in &lines {
        writer.record(item(line)).unwrap();
    }
    writer.close().unwrap();

    let rows: Vec<ItemRow> = cp
        .items_in_order(&f.id)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.line).collect::<Vec<_>>(),
        (1..=1300).collect::<Vec<_>>()
    );
    assert_eq!(rows[0], item(1));
    assert_eq!(rows[4], item(5), "a failed item with no output");
    assert_eq!(rows[1299], item(1300));
    assert_eq!(cp.items_in_order("other").unwrap().count(), 0);
}

#[test]
fn counts_add_up() {
    let f = Fixture::new();
    let cp = f.open();
    f.begin(&cp, "j", "i", false).unwrap();
    let writer = cp.writer(&f.id).unwrap();
    for line in 1..=100 {
        writer.record(item(line)).unwrap();
    }
    writer.close().unwrap();

    let counts = cp.counts(&f.id).unwrap();
    assert_eq!(counts.ok, 80);
    assert_eq!(counts.failed, 20);
    assert_eq!(counts.tokens, 1000);
    assert!((counts.cost_usd - 0.1).abs() < 1e-9);
    // Lines divisible by 7 have no deployment: 14 of them.
    assert_eq!(counts.by_deployment.values().sum::<u64>(), 86);
    let expected = |r: u64| (1..=100u64).filter(|l| l % 7 != 0 && l % 3 == r).count() as u64;
    assert_eq!(counts.by_deployment["d0"], expected(0));
    assert_eq!(counts.by_deployment["d1"], expected(1));
    assert_eq!(counts.by_deployment["d2"], expected(2));
}

#[test]
fn batch_ids_are_stable_per_job_and_input() {
    let f = Fixture::new();
    assert_eq!(f.id.len(), 16);
    assert_eq!(f.id, Checkpoint::batch_id_for(JOB, &f.input));
    let dotted = f.dir.path().join(".").join("in.jsonl");
    assert_eq!(f.id, Checkpoint::batch_id_for(JOB, &dotted));
    assert_ne!(f.id, Checkpoint::batch_id_for("other", &f.input));
    assert_ne!(
        f.id,
        Checkpoint::batch_id_for(JOB, &f.dir.path().join("other.jsonl"))
    );
}

#[test]
fn state_and_total_are_kept() {
    let f = Fixture::new();
    let cp = f.open();
    f.begin(&cp, "j", "i", false).unwrap();
    cp.set_total(&f.id, 42).unwrap();
    cp.set_state(&f.id, BatchState::Done).unwrap();
    let (state, total): (String, i64) = cp
        .lock()
        .query_row(
            "SELECT state, total FROM batches WHERE id = ?1",
            [&f.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((state.as_str(), total), ("done", 42));
    let err = cp.set_state("nope", BatchState::Cancelled).unwrap_err();
    assert!(matches!(err, CheckpointError::UnknownBatch { .. }));
    // Resuming a finished batch marks it running again.
    f.begin(&cp, "j", "i", false).unwrap();
    let state: String = cp
        .lock()
        .query_row("SELECT state FROM batches WHERE id = ?1", [&f.id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(state, "running");
}

#[test]
fn output_lines_have_every_field() {
    let line = |i, kind| -> Value { serde_json::from_slice(&output_line(&item(i), kind)).unwrap() };
    let ok = line(1, crate::batch::job::Kind::Chat);
    assert_eq!(
        ok,
        json!({
            "id": "item-1", "status": "ok", "output": {"label": "spam", "line": 1},
            "raw": "spam 1", "deployment": "d1", "attempts": 2, "tokens": 10,
            "cost_usd": 0.001, "error": null, "via": "sync",
        })
    );
    let failed = line(35, crate::batch::job::Kind::Chat);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["output"], Value::Null);
    assert_eq!(failed["raw"], Value::Null);
    assert_eq!(failed["deployment"], Value::Null);
    assert_eq!(failed["error"], "label not in the list");
    assert_eq!(failed.as_object().unwrap().len(), 10);
}
