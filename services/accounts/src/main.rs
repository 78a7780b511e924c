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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cfg: NodeConfig =
        match service_kit::config::load(cli.flags.config.as_deref(), std::env::vars(), &cli.flags.overrides()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accounts: {e}");
                return std::process::ExitCode::from(2);
            }
        };
    if let Some(Command::PrintConfig) = cli.command {
        print!("{}", service_kit::config::render(&cfg));
        return std::process::ExitCode::SUCCESS;
    }
    if let Err(e) = cfg.validate() {
        eprintln!("accounts: invalid configuration: {e}");
        return std::process::ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("accounts: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(accounts::node::run_until_signal(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("accounts: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
