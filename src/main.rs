//! The map of Switchyard: parse the command line, load the config, start the long-lived services
//! (provider actors under their supervisor, the NATS ingress), and on SIGTERM/SIGINT shut them
//! down in order: stop taking requests, drain those in flight, stop the actors.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use switchyard::batch;
use switchyard::cli::{BatchCommand, Cli, Command, ImportCommand, LogFormat};
use switchyard::commands::{batch_client, demo, import, request, status, submit};
use switchyard::config::Config;
use switchyard::engine::Engine;
use switchyard::ingress;
use tracing_subscriber::EnvFilter;

/// mimalloc: the request path allocates many small short-lived objects (JSON values, headers,
/// messages); glibc's malloc spent ~12 % of the engine's CPU on them under load.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve { .. } => "info",
        Command::Demo { .. }
        | Command::Status { .. }
        | Command::Request { .. }
        | Command::Submit { .. }
        | Command::Batch { .. }
        | Command::Import { .. } => "error",
    };
    // Log lines are written by a background thread: a request never waits on stderr. The guard
    // flushes what is left when `main` returns.
    let _logs = init_logs(cli.log_format, default_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(Config::load(&args.config)?).await,
        Command::Demo(args) => {
            let config = match &args.config {
                Some(path) => Config::load(path)?,
                None => Config::demo(),
            };
            if args.burst || args.strategy.is_some() {
                demo::run(&config, &args).await
            } else {
                demo::batch(&config).await
            }
        }
        Command::Status(args) => status::run(&Config::load(&args.config)?, &args).await,
        Command::Import {
            command: ImportCommand::Litellm(args),
        } => {
            let text = std::fs::read_to_string(&args.file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
            let imported = import::litellm(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
            for note in &imported.notes {
                eprintln!("switchyard import: {note}");
            }
            print!("{}", imported.toml);
            Ok(())
        }
        Command::Batch {
            command: BatchCommand::Run(args),
        } => {
            let config = Config::load(&args.config)?;
            batch::runner::run(&config, args.into()).await?.print();
            Ok(())
        }
        Command::Batch { command } => batch_client::run(command).await,
        Command::Request(args) => {
            if request::run(&Config::load(&args.config)?, args).await? {
                Ok(())
            } else {
                anyhow::bail!("the request failed (see Llm-Error above)")
            }
        }
        Command::Submit(args) => {
            if submit::run(&Config::load(&args.config)?, args).await? {
                Ok(())
            } else {
                anyhow::bail!("the job failed (see Llm-Error above)")
            }
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let instance = instance_id();
    let client = ingress::connect(&config.nats, &format!("switchyard-{instance}")).await?;
    let engine = Arc::new(Engine::start(&config, &instance).await?);
    ingress::run(client, engine.clone(), &config, shutdown_signal()).await?;
    engine.stop().await;
    Ok(())
}

/// `SWITCHYARD_INSTANCE`, else host name and process id.
fn instance_id() -> String {
    std::env::var("SWITCHYARD_INSTANCE").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "switchyard".into());
        format!("{host}-{}", std::process::id())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// What must live until `main` returns: the log writer's flush, and the trace exporter's.
struct LogGuards {
    _logs: switchyard::observe::log_writer::Guard,
    #[cfg(feature = "otlp")]
    _otlp: Option<switchyard::observe::otlp::Guard>,
}

fn init_logs(format: LogFormat, default_level: &str) -> LogGuards {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    use tracing_subscriber::filter::FilterExt;

    // What RUST_LOG lets through, for the log lines alone: a filter on that layer, not on the
    // whole subscriber, so that without a trace exporter no layer wants spans and a request's
    // spans cost nearly nothing (the exporter has its own filter, `observe::otlp`).
    let logged =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Lines waiting for the writer thread: 16k lines is ~4 MB of a few seconds' work; past it,
    // logging waits for stderr instead of growing memory. The thread writes them in batches
    // and is not woken per line (`observe::log_writer`).
    let (writer, guard) =
        switchyard::observe::log_writer::LogWriter::spawn(std::io::stderr(), 16_384);
    let shape = match format {
        LogFormat::Json => switchyard::observe::log_line::Shape::Json,
        LogFormat::Text => switchyard::observe::log_line::Shape::Text,
    };
    // Lines carry their own fields, each once: the log layer is not shown spans at all, so it
    // neither formats their fields when they open (work on every request) nor repeats them on
    // every line inside them. Spans are for the trace exporter.
    let events_only = logged.and(tracing_subscriber::filter::filter_fn(|m| m.is_event()));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(format == LogFormat::Text && std::io::stderr().is_terminal())
        .event_format(switchyard::observe::log_line::LogLine(shape))
        .with_filter(events_only);
    let registry = tracing_subscriber::registry().with(fmt);
    #[cfg(feature = "otlp")]
    {
        let (otlp, otlp_guard) = match switchyard::observe::otlp::layer() {
            Ok(Some((layer, guard))) => (Some(layer), Some(guard)),
            Ok(None) => (None, None),
            Err(e) => {
                eprintln!("switchyard: traces will not be exported: {e}");
                (None, None)
            }
        };
        registry.with(otlp).init();
        LogGuards {
            _logs: guard,
            _otlp: otlp_guard,
        }
    }
    #[cfg(not(feature = "otlp"))]
    {
        registry.init();
        LogGuards { _logs: guard }
    }
}
