//! `mqtt-edge`: one MQTT edge node. `mqtt-edge print-config` shows the effective configuration.

use clap::Parser;
use mqtt_edge::{EdgeConfig, cli::EdgeFlags};

#[derive(Debug, Parser)]
#[command(name = "mqtt-edge", version, about = "Hermes MQTT edge node")]
struct Cli {
    #[command(flatten)]
    flags: EdgeFlags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Serve MQTT (the default).
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
        name: "mqtt-edge",
        config_file: cli.flags.shared.config.as_deref(),
        overrides: &cli.flags.overrides(),
        print_config: matches!(cli.command, Some(Command::PrintConfig)),
    };
    service_kit::node::main(invocation, EdgeConfig::validate, mqtt_edge::run_until_signal)
}
