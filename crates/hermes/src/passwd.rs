//! `hermes passwd`: adds or replaces `username:argon2id-hash` in a users file.

use std::io::BufRead;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct PasswdArgs {
    /// The users file to create or update.
    #[arg(long)]
    users_file: PathBuf,
    /// User name (no `:` and no whitespace).
    username: String,
    /// The password; read from the first line of standard input when absent. May start with `-`.
    #[arg(long, allow_hyphen_values = true)]
    password: Option<String>,
}

pub fn run(args: PasswdArgs) -> Result<(), String> {
    if args.username.is_empty() || args.username.contains(':') || args.username.contains(char::is_whitespace) {
        return Err("username must be non-empty, without ':' or whitespace".into());
    }
    let password = match args.password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("reading password from stdin: {e}"))?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if password.is_empty() {
        return Err("password must not be empty".into());
    }
    let hash = service_kit::password::hash(&password)?;
    // Only a missing file starts empty: one that cannot be read must not lose its users.
    let existing = match std::fs::read_to_string(&args.users_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", args.users_file.display())),
    };
    let prefix = format!("{}:", args.username);
    let mut lines: Vec<String> = existing.lines().filter(|l| !l.starts_with(&prefix)).map(str::to_owned).collect();
    lines.push(format!("{}{hash}", prefix));
    if let Some(dir) = args.users_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    // Password hashes: readable by their owner only.
    accounts::owner_only::replace(&args.users_file, (lines.join("\n") + "\n").as_bytes())
        .map_err(|e| format!("{}: {e}", args.users_file.display()))?;
    println!("user {} saved in {}", args.username, args.users_file.display());
    Ok(())
}
