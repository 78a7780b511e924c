//! `hermes`: the all-in-one server (`hermes up`), admin and client verbs, and the benchmark tool.

mod bench;
mod client;
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
    /// Log in to the accounts API and keep the session (token) in a file.
    Login(client::LoginArgs),
    /// Show contacts (all, or the changes since a version).
    Contacts(client::ContactsArgs),
    /// Follow (or --unfollow) a user of your enterprise.
    Follow(client::FollowArgs),
    /// Send a text message to a user's inbox.
    Send(client::SendArgs),
    /// Print what arrives: your inbox, friends' presence, notices.
    Listen(client::ListenArgs),
    /// Set your signature (friends see it at once, retained).
    Signature(client::SignatureArgs),
    /// Watch friends' presence and signatures.
    Presence(client::ListenArgs),
    /// End this session (or --everywhere: every session, every device).
    Logout(client::LogoutArgs),
}

/// mimalloc rather than glibc's allocator: threads free what other threads allocated (an edge's
/// workers, each other's messages), where glibc's arenas contend (BENCHMARKS, "mimalloc").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::run(args),
        Command::PrintConfig(args) => up::print_config(args),
        Command::Passwd(args) => passwd::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Login(args) => client::login(args),
        Command::Contacts(args) => client::contacts(args),
        Command::Follow(args) => client::follow(args),
        Command::Send(args) => client::send(args),
        Command::Listen(args) => client::listen(args),
        Command::Signature(args) => client::signature(args),
        Command::Presence(args) => client::presence(args),
        Command::Logout(args) => client::logout(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hermes: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
