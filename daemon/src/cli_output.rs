//! The command-line output layer both binaries share, so their client commands look and
//! behave alike: one `--output text|json` switch, one way to print a result, one error
//! format, one exit-code table.
//!
//! | exit code | meaning |
//! |---|---|
//! | 0 | success (also `--help` and `--version`) |
//! | 1 | the command failed or was refused (the message says why) |
//! | 64 ([`EX_USAGE`]) | an invalid flag, argument or configuration |
//!
//! Errors go to stderr. In text mode they read `error: <what failed>: <cause>: ...`; with
//! `--output json` they are one JSON object, `{"error": {"message": ..., "causes": [...],
//! "exit_code": N}}`, so a script reading JSON never has to parse prose.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use crate::EX_USAGE;

/// How a client command prints its result (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Human-readable text; times in RFC 3339.
    #[default]
    Text,
    /// One JSON document (or one per line for streams); times as numbers.
    Json,
}

/// The caller's mistake in how the command was invoked (exit code [`EX_USAGE`]), as opposed
/// to a command that ran and failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code for a failed command: [`EX_USAGE`] when the cause is a [`UsageError`],
/// else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|c| c.is::<UsageError>()) {
        EX_USAGE
    } else {
        1
    }
}

/// Prints a command's result on stdout: `text` as is, or `value` as one JSON line.
#[expect(
    clippy::print_stdout,
    reason = "the result of a command goes to stdout"
)]
pub fn print(output: Output, text: &str, value: &serde_json::Value) {
    match output {
        Output::Text => print!("{text}"),
        Output::Json => println!("{value}"),
    }
}

/// The text form of an error: `error: ` then the error and its causes, joined by `: `.
pub fn error_text(err: &anyhow::Error) -> String {
    format!("error: {err:#}")
}

/// The JSON form of an error (see the module docs).
pub fn error_json(err: &anyhow::Error) -> serde_json::Value {
    let mut chain = err.chain().map(ToString::to_string);
    let message = chain.next().unwrap_or_default();
    json!({"error": {
        "message": message,
        "causes": chain.collect::<Vec<_>>(),
        "exit_code": exit_code(err),
    }})
}

/// Prints an error on stderr in the chosen format.
#[expect(
    clippy::print_stderr,
    reason = "errors are reported to the operator on stderr"
)]
pub fn print_error(output: Output, err: &anyhow::Error) {
    match output {
        Output::Text => eprintln!("{}", error_text(err)),
        Output::Json => eprintln!("{}", error_json(err)),
    }
}

/// The `--output` a command line asks for, read from the raw arguments: used to report a
/// parse error in the format the caller expects before clap could parse anything.
pub fn output_in_args<I, T>(args: I) -> Output
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let json = args.iter().enumerate().any(|(i, a)| {
        a == "--output=json"
            || (a == "--output" && args.get(i + 1).is_some_and(|next| next == "json"))
    });
    if json { Output::Json } else { Output::Text }
}

/// Parses the command line with clap, mapping its outcome to this layer's exit codes:
/// `--help` and `--version` print and exit 0; any parse error (unknown flag, missing or
/// invalid value) is reported and exits [`EX_USAGE`] instead of clap's 2.
pub fn parse<P: clap::Parser>() -> Result<P, ExitCode> {
    parse_from(std::env::args_os())
}

/// [`parse`] over given arguments (the first is the program name).
#[expect(clippy::print_stderr, reason = "clap's parse errors go to stderr")]
pub fn parse_from<P, I, T>(args: I) -> Result<P, ExitCode>
where
    P: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    match P::try_parse_from(&args) {
        Ok(parsed) => Ok(parsed),
        Err(e) => Err(match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                // Help and version are answers, not errors: stdout, exit 0.
                let _ = e.print();
                ExitCode::SUCCESS
            }
            _ => {
                match output_in_args(&args) {
                    Output::Json => {
                        // clap's first line, without its `error: ` (the usage text that
                        // follows it is for people).
                        let rendered = e.render().to_string();
                        let first = rendered.lines().next().unwrap_or_default();
                        let message = first.strip_prefix("error: ").unwrap_or(first);
                        let err = anyhow::Error::new(UsageError(message.to_owned()));
                        eprintln!("{}", error_json(&err));
                    }
                    // clap's own rendering: `error: ...`, the usage line and a `--help` hint.
                    Output::Text => {
                        let _ = e.print();
                    }
                }
                ExitCode::from(EX_USAGE)
            }
        }),
    }
}

/// Connects to a local gRPC API on the Unix socket at `path`. On failure the error names
/// what was being reached, the OS error (once), and how to point the command elsewhere:
/// `env_var` (e.g. `SPIFFE_ENDPOINT_SOCKET`) and `flag` (e.g. `--socket-path`). With
/// `trusted_uids`, a socket served by a process running as another user is refused
/// ([`crate::socket::connect_unix_checked`]).
pub async fn connect_socket(
    path: &Path,
    what: &str,
    daemon_name: &str,
    env_var: &str,
    flag: &str,
    trusted_uids: Option<&[u32]>,
) -> anyhow::Result<tonic::transport::Channel> {
    crate::socket::connect_unix_checked(path, trusted_uids).await.map_err(|e| {
        let cause = io_cause(&e).map_or_else(|| e.to_string(), ToString::to_string);
        anyhow::anyhow!(
            "cannot reach {what} at {}: {cause} (is {daemon_name} running? set {env_var} or {flag} to its socket)",
            path.display()
        )
    })
}

/// The innermost I/O error in an error's source chain (tonic and hyper each wrap it, and
/// each repeats it in their own message).
fn io_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut found = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            found = Some(io);
        }
        cur = e.source();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    #[command(name = "t", version)]
    struct Cli {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        #[arg(long)]
        n: Option<u32>,
    }

    #[test]
    fn parse_errors_are_usage_errors_and_help_is_success() {
        assert_eq!(
            parse_from::<Cli, _, _>(["t", "--bogus"]).unwrap_err(),
            ExitCode::from(EX_USAGE)
        );
        assert_eq!(
            parse_from::<Cli, _, _>(["t", "--n", "x", "--output", "json"]).unwrap_err(),
            ExitCode::from(EX_USAGE)
        );
        assert_eq!(
            parse_from::<Cli, _, _>(["t", "--help"]).unwrap_err(),
            ExitCode::SUCCESS
        );
        assert_eq!(
            parse_from::<Cli, _, _>(["t", "--version"]).unwrap_err(),
            ExitCode::SUCCESS
        );
        let ok = parse_from::<Cli, _, _>(["t", "--n", "3", "--output=json"]).unwrap();
        assert_eq!((ok.n, ok.output), (Some(3), Output::Json));
    }

    #[test]
    fn output_is_found_in_raw_args() {
        assert_eq!(output_in_args(["t", "x", "--output", "json"]), Output::Json);
        assert_eq!(output_in_args(["t", "--output=json", "x"]), Output::Json);
        assert_eq!(output_in_args(["t", "--output", "text"]), Output::Text);
        assert_eq!(output_in_args(["t", "json"]), Output::Text);
    }

    #[test]
    fn errors_have_one_text_and_one_json_form() {
        let err = anyhow::anyhow!("disk full").context("writing svid.pem");
        assert_eq!(error_text(&err), "error: writing svid.pem: disk full");
        assert_eq!(
            error_json(&err),
            json!({"error": {"message": "writing svid.pem", "causes": ["disk full"], "exit_code": 1}})
        );
        let usage = anyhow::Error::new(UsageError("bad --ttl".into())).context("task begin");
        assert_eq!(exit_code(&usage), EX_USAGE);
        assert_eq!(error_json(&usage)["error"]["exit_code"], 64);
    }

    #[tokio::test]
    async fn socket_errors_name_the_variable_and_the_os_error_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.sock");
        let err = connect_socket(
            &path,
            "the Workload API",
            "tessera-agent",
            "SPIFFE_ENDPOINT_SOCKET",
            "--socket-path",
            None,
        )
        .await
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("SPIFFE_ENDPOINT_SOCKET"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert_eq!(msg.matches("No such file or directory").count(), 1, "{msg}");
    }
}
