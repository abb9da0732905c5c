//! The command line: `switchyard serve | demo | request | submit | batch | status | import`. Each verb's
//! arguments are one clap `Args` struct, which its command in `crate::commands` takes as it is.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Serve(ServeArgs),
    /// A batch on the demo config, in-process (no NATS, no API key): the embedded ticket-triage
    /// job over 20 tickets, in `./switchyard-demo/`. Run it twice: the second run resumes.
    /// With `--burst`: a burst of chat requests showing who served each, the fallbacks and the
    /// circuit transitions.
    Demo(DemoArgs),
    /// Send one chat request on `llm.chat.<TASK>` and print the reply (headers on stderr).
    Request(RequestArgs),
    /// Submit one durable async job on `llm.submit.<TASK>` (JetStream) and print its id; with
    /// --wait, also its result (headers on stderr), read from the results stream.
    Submit(SubmitArgs),
    /// Batch jobs from files (docs/contract.md §5).
    Batch {
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Gather every instance's `llm.status` answer and print it as a table.
    Status(StatusArgs),
    /// Print the Switchyard TOML equivalent of another gateway's config (on stderr: every key
    /// that could not be carried, and why).
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// A LiteLLM proxy `config.yaml`.
    Litellm(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The YAML file.
    pub file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Run a job over an input file in-process (no NATS), checkpointing every item; run the same
    /// command again after a crash and it resumes.
    Run(BatchRunArgs),
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

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The burst of chat requests instead of the batch.
    #[arg(long)]
    pub burst: bool,
    /// A config file; without it, the embedded `config/demo.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How many requests to send.
    #[arg(long, default_value_t = 80)]
    pub requests: usize,
    /// Time between two requests being sent.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Route every request of the burst with this strategy (sent as `Llm-Strategy`); implies
    /// `--burst`.
    #[arg(long)]
    pub strategy: Option<String>,
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The task token of the subject.
    pub task: String,
    /// A prompt, sent as one user message.
    pub prompt: Option<String>,
    /// A file with the whole OpenAI-shaped request body.
    #[arg(long, conflicts_with = "prompt")]
    pub file: Option<PathBuf>,
    /// A request header, `Llm-Deadline: 20s`; repeatable.
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// How long to wait for the reply (for each chunk with --stream).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Stream the reply (with a prompt: sets `"stream": true`).
    #[arg(long, conflicts_with = "embed")]
    pub stream: bool,
    /// An embeddings request on `llm.embed.<TASK>` (the prompt is the `input`); the reply's
    /// vectors are shown by their first numbers.
    #[arg(long)]
    pub embed: bool,
    #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The task token of the subject.
    pub task: String,
    /// A file with the whole OpenAI-shaped request body; `-` reads stdin.
    #[arg(long)]
    pub file: PathBuf,
    /// Wait for the result and print it; exit non-zero if it is an error.
    #[arg(long)]
    pub wait: bool,
    /// The job id (sent as `Nats-Msg-Id`); a new UUID v7 when absent.
    #[arg(long)]
    pub job_id: Option<String>,
    /// A job header, `Llm-Deadline: 20s`; repeatable.
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// How long to wait for the server to store the job, and with --wait for the result.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Print the raw JSON answers, one per line.
    #[arg(long)]
    pub json: bool,
    /// Refresh in place until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// How long to gather answers from instances.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub gather: Duration,
    /// Refresh period with --watch.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub every: Duration,
    /// Only this instance's answer; exit non-zero when it does not answer (a health check:
    /// the Docker image runs `status --instance $SWITCHYARD_INSTANCE`).
    #[arg(long)]
    pub instance: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
}

/// `Name: value` or `Name=value`.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .or_else(|| s.split_once('='))
        .ok_or_else(|| format!("`{s}` is not `Name: value`"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

#[derive(Debug, Args)]
pub struct BatchRunArgs {
    /// The job file (see jobs/).
    pub job: PathBuf,
    /// JSONL (one object per line) or CSV with a header.
    #[arg(long)]
    pub input: PathBuf,
    /// Where the results go (default: INPUT's name with `.out.jsonl`).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// The checkpoint database.
    #[arg(long, default_value = "switchyard-batch.db")]
    pub db: PathBuf,
    /// Start the batch over even if its job or input changed.
    #[arg(long)]
    pub restart: bool,
    #[arg(long, env = "SWITCHYARD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
}

impl From<BatchRunArgs> for crate::batch::runner::RunArgs {
    fn from(a: BatchRunArgs) -> Self {
        Self {
            job: a.job,
            input: a.input,
            output: a.output,
            db: a.db,
            restart: a.restart,
        }
    }
}
