//! `hermes`: the all-in-one server (`hermes up`), admin and client verbs, and the benchmark tool.

mod bench;
mod passwd;
mod up;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "hermes", version, about = "Hermes enterprise push system")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in one process on embedded defaults (no external dependencies).
    Up(up::UpArgs),
    /// Print the configuration `hermes up` would use, as TOML, and exit.
    PrintConfig(up::UpArgs),
    /// Add or update a user in a users file (argon2id hash).
    Passwd(passwd::PasswdArgs),
    /// Measure an MQTT broker (ours or any other): connections, fan-out, throughput.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::run(args),
        Command::PrintConfig(args) => up::print_config(args),
        Command::Passwd(args) => passwd::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hermes: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
