//! The command line: `switchyard serve | demo | request | submit | batch | status`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Routes LLM requests across providers over NATS"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve `llm.chat.<task>` and `llm.status` over NATS until SIGTERM/SIGINT, then drain.
    Serve {
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// A batch on the demo config, in-process (no NATS, no API key): the embedded ticket-triage
    /// job over 20 tickets, in `./switchyard-demo/`. Run it twice: the second run resumes.
    /// With `--burst`: a burst of chat requests showing who served each, the fallbacks and the
    /// circuit transitions.
    Demo {
        /// The burst of chat requests instead of the batch.
        #[arg(long)]
        burst: bool,
        /// A config file; without it, the embedded `config/demo.toml`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// How many requests to send.
        #[arg(long, default_value_t = 80)]
        requests: usize,
        /// Time between two requests being sent.
        #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Route every request of the burst with this strategy (sent as `Llm-Strategy`); implies
        /// `--burst`.
        #[arg(long)]
        strategy: Option<String>,
    },
    /// Send one chat request on `llm.chat.<TASK>` and print the reply (headers on stderr).
    Request {
        /// The task token of the subject.
        task: String,
        /// A prompt, sent as one user message.
        prompt: Option<String>,
        /// A file with the whole OpenAI-shaped request body.
        #[arg(long, conflicts_with = "prompt")]
        file: Option<PathBuf>,
        /// A request header, `Llm-Deadline: 20s`; repeatable.
        #[arg(long = "header", short = 'H', value_parser = crate::commands::request::parse_header)]
        headers: Vec<(String, String)>,
        /// How long to wait for the reply (for each chunk with --stream).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Stream the reply (with a prompt: sets `"stream": true`).
        #[arg(long)]
        stream: bool,
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Submit one durable async job on `llm.submit.<TASK>` (JetStream) and print its id; with
    /// --wait, also its result (headers on stderr), read from the results stream.
    Submit {
        /// The task token of the subject.
        task: String,
        /// A file with the whole OpenAI-shaped request body; `-` reads stdin.
        #[arg(long)]
        file: PathBuf,
        /// Wait for the result and print it; exit non-zero if it is an error.
        #[arg(long)]
        wait: bool,
        /// The job id (sent as `Nats-Msg-Id`); a new UUID v7 when absent.
        #[arg(long)]
        job_id: Option<String>,
        /// A job header, `Llm-Deadline: 20s`; repeatable.
        #[arg(long = "header", short = 'H', value_parser = crate::commands::request::parse_header)]
        headers: Vec<(String, String)>,
        /// How long to wait for the server to store the job, and with --wait for the result.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Batch jobs from files (contract section 5).
    Batch {
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Gather every instance's `llm.status` answer and print it as a table.
    Status {
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
        /// Print the raw JSON answers, one per line.
        #[arg(long)]
        json: bool,
        /// Refresh in place until interrupted.
        #[arg(long)]
        watch: bool,
        /// How long to gather answers from instances.
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        gather: Duration,
        /// Refresh period with --watch.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        every: Duration,
        /// Only this instance's answer; exit non-zero when it does not answer (a health check:
        /// the Docker image runs `status --instance $SWITCHYARD_INSTANCE`).
        #[arg(long)]
        instance: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Run a job over an input file in-process (no NATS), checkpointing every item; run the same
    /// command again after a crash and it resumes.
    Run {
        /// The job file (see jobs/).
        job: PathBuf,
        /// JSONL (one object per line) or CSV with a header.
        #[arg(long)]
        input: PathBuf,
        /// Where the results go (default: INPUT's name with `.out.jsonl`).
        #[arg(long)]
        output: Option<PathBuf>,
        /// The checkpoint database.
        #[arg(long, default_value = "switchyard-batch.db")]
        db: PathBuf,
        /// Start the batch over even if its job or input changed.
        #[arg(long)]
        restart: bool,
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Start a batch inside a running `serve` (over NATS); prints its id.
    Submit {
        job: PathBuf,
        /// The input file (JSONL or CSV), read here and sent inline with the job.
        #[arg(long)]
        input: PathBuf,
        /// Stay and print each result as it comes, until the batch ends.
        #[arg(long)]
        wait: bool,
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Counts of a batch run by `serve`.
    Status {
        id: String,
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Print a batch's results as they come (one JSON line each) until it ends.
    Results {
        id: String,
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Stop a batch: no new calls; what finished stays checkpointed; submit it again to resume.
    Cancel {
        id: String,
        #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
    },
}
