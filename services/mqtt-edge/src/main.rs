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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cfg: EdgeConfig =
        match service_kit::config::load(cli.flags.config.as_deref(), std::env::vars(), &cli.flags.overrides()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("mqtt-edge: {e}");
                return std::process::ExitCode::from(2);
            }
        };
    if let Some(Command::PrintConfig) = cli.command {
        print!("{}", service_kit::config::render(&cfg));
        return std::process::ExitCode::SUCCESS;
    }
    if let Err(e) = cfg.validate() {
        eprintln!("mqtt-edge: invalid configuration: {e}");
        return std::process::ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mqtt-edge: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(mqtt_edge::run_until_signal(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mqtt-edge: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
