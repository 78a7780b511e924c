//! `accounts`: one accounts node (REST API on SQLite or Postgres). `accounts print-config` shows
//! the effective configuration.

use accounts::cli::NodeFlags;
use accounts::config::NodeConfig;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "accounts", version, about = "Hermes accounts node")]
struct Cli {
    #[command(flatten)]
    flags: NodeFlags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Serve the accounts API (the default).
    Run,
    /// Print the effective configuration as TOML and exit.
    PrintConfig,
}

/// mimalloc rather than glibc's allocator: threads free what other threads allocated (an edge's
/// workers, each other's messages), where glibc's arenas contend (BENCHMARKS, "mimalloc").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let invocation = service_kit::node::Invocation {
        name: "accounts",
        config_file: cli.flags.shared.config.as_deref(),
        overrides: &cli.flags.overrides(),
        print_config: matches!(cli.command, Some(Command::PrintConfig)),
    };
    service_kit::node::main(invocation, NodeConfig::validate, accounts::node::run_until_signal)
}
