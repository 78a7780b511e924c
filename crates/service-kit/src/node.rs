//! What every service binary's `main` does (`mqtt-edge`, `accounts`): load the settings (defaults
//! → TOML file → `HERMES_*` environment → flags), print them or check them, then run until a
//! signal. One line on standard error for any failure, exit code 2 for settings, 1 otherwise.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::Value;

/// A service binary's command line, as `main` hands it over.
#[derive(Debug)]
pub struct Invocation<'a> {
    /// The binary's name, at the start of every error line.
    pub name: &'a str,
    pub config_file: Option<&'a Path>,
    /// The flags that were given, as (config key, value).
    pub overrides: &'a [(&'static str, Value)],
    /// `print-config`: print the effective settings instead of running.
    pub print_config: bool,
}

/// Loads the settings of `how`, then prints them, or checks them with `validate` and runs
/// `run` on a multi-threaded runtime.
pub fn main<C, Fut>(
    how: Invocation<'_>,
    validate: impl FnOnce(&C) -> Result<(), String>,
    run: impl FnOnce(C) -> Fut,
) -> ExitCode
where
    C: Serialize + DeserializeOwned + Default,
    Fut: Future<Output = Result<(), String>>,
{
    let name = how.name;
    let cfg: C = match crate::config::load(how.config_file, std::env::vars(), how.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    if how.print_config {
        print!("{}", crate::config::render(&cfg));
        return ExitCode::SUCCESS;
    }
    if let Err(e) = validate(&cfg) {
        eprintln!("{name}: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
