//! Configuration files: every flag of a binary can also be given in a TOML
//! file named by `--config FILE`.
//!
//! A key is a flag's long name without the dashes, with `-` or `_`
//! (`listen-addr` or `listen_addr`). Values: a string or number for a flag
//! that takes a value, `true`/`false` for a switch, an array for a flag that
//! takes a list. A flag on the command line overrides the same key in the
//! file; a key that names no flag is an error that names the key (a typo must
//! not be silently ignored), and so is a value of the wrong kind.
//!
//! The file is turned into command-line arguments placed before the real
//! ones and parsed by the same clap definition, so the file and the flags
//! accept exactly the same values with the same checks and messages.

use clap::{ArgAction, CommandFactory, FromArgMatches};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Parses the process's arguments as `T`, taking defaults from the TOML file
/// named by `--config FILE` if one is given. On an error (bad flag, unreadable
/// or invalid file, unknown key) prints it the way clap does and exits 2.
pub fn parse_args<T: CommandFactory + FromArgMatches>() -> T {
    match try_parse_args(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(ConfigError::File(msg)) => {
            eprintln!("error: {msg}");
            std::process::exit(2);
        }
    }
}

#[derive(Debug)]
pub enum ConfigError {
    /// What clap says about the arguments (also `--help`, `--version`).
    Clap(clap::Error),
    /// The file cannot be read or does not fit the flags.
    File(String),
}

/// [`parse_args`] on an explicit argument list (`argv[0]` first).
pub fn try_parse_args<T: CommandFactory + FromArgMatches>(
    argv: Vec<OsString>,
) -> Result<T, ConfigError> {
    let mut command = T::command();
    let argv = match config_path(&argv) {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::File(format!("cannot read config file {}: {e}", path.display()))
            })?;
            let from_file = file_args(&command, &path, &text, &argv)?;
            let mut all = Vec::with_capacity(argv.len() + from_file.len());
            all.push(argv[0].clone());
            all.extend(from_file);
            all.extend(argv.into_iter().skip(1));
            all
        }
        None => argv,
    };
    let matches = command
        .try_get_matches_from_mut(argv)
        .map_err(ConfigError::Clap)?;
    T::from_arg_matches(&matches).map_err(|e| ConfigError::Clap(e.format(&mut command)))
}

/// The file named by `--config FILE` or `--config=FILE`, if any.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// Whether the command line gives `--name` itself (then the file's value
/// for it is not used: flags override the file, lists included).
fn given_on_command_line(argv: &[OsString], name: &str) -> bool {
    let flag = format!("--{name}");
    let with_value = format!("--{name}=");
    argv.iter().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == flag || a.starts_with(&with_value)
    })
}

/// The file's settings as command-line arguments, checked against
/// `command`'s flags.
fn file_args(
    command: &clap::Command,
    path: &Path,
    text: &str,
    argv: &[OsString],
) -> Result<Vec<OsString>, ConfigError> {
    let file = path.display();
    let table: toml::Table = text
        .parse()
        .map_err(|e| ConfigError::File(format!("config file {file}: {e}")))?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let name = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && name != "config")
            .ok_or_else(|| {
                let known: Vec<String> = command
                    .get_arguments()
                    .filter_map(|a| a.get_long())
                    .filter(|l| !matches!(*l, "config" | "help" | "version"))
                    .map(str::to_string)
                    .collect();
                ConfigError::File(format!(
                    "config file {file}: unknown key '{key}' (known keys: {})",
                    known.join(", ")
                ))
            })?;
        if given_on_command_line(argv, &name) {
            continue;
        }
        let wrong = |what: &str| {
            ConfigError::File(format!(
                "config file {file}: key '{key}' must be {what}, not {}",
                value.type_str()
            ))
        };
        let flag = format!("--{name}");
        match arg.get_action() {
            ArgAction::SetTrue => match value {
                toml::Value::Boolean(true) => out.push(flag.into()),
                toml::Value::Boolean(false) => {}
                _ => return Err(wrong("true or false")),
            },
            ArgAction::Set | ArgAction::Append => {
                let items: Vec<&toml::Value> = match value {
                    toml::Value::Array(items) => items.iter().collect(),
                    other => vec![other],
                };
                let is_list = matches!(arg.get_action(), ArgAction::Append)
                    || arg.get_value_delimiter().is_some();
                if items.len() != 1 && !is_list {
                    return Err(wrong("one value"));
                }
                let mut texts = Vec::new();
                for item in items {
                    texts.push(match item {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(i) => i.to_string(),
                        toml::Value::Float(f) => f.to_string(),
                        toml::Value::Boolean(b) => b.to_string(),
                        _ => return Err(wrong("a string, a number or an array of them")),
                    });
                }
                match arg.get_value_delimiter() {
                    // One flag, the list joined the way the flag splits it.
                    Some(d) => out.push(format!("{flag}={}", texts.join(&d.to_string())).into()),
                    None => out.extend(texts.iter().map(|t| format!("{flag}={t}").into())),
                }
            }
            _ => {
                return Err(ConfigError::File(format!(
                    "config file {file}: key '{key}' cannot be set in a file"
                )))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Write;
    use std::net::SocketAddr;

    #[derive(Parser, Debug, PartialEq)]
    struct Args {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        node_id: u64,
        #[arg(long, default_value = "127.0.0.1:1")]
        listen_addr: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:2", value_delimiter = ',')]
        manager_addr: Vec<SocketAddr>,
        #[arg(long)]
        persistence: bool,
        #[arg(long, default_value_t = 0.0)]
        batch_timeout: f64,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn parse(argv: &[&str]) -> Result<Args, ConfigError> {
        let mut all = vec![OsString::from("server")];
        all.extend(argv.iter().map(OsString::from));
        try_parse_args(all)
    }

    fn file_error(result: Result<Args, ConfigError>) -> String {
        match result {
            Err(ConfigError::File(msg)) => msg,
            other => panic!("expected a config file error, got {other:?}"),
        }
    }

    #[test]
    fn the_file_sets_every_kind_of_flag_and_flags_override_it() {
        let f = file(
            "node_id = 2\nlisten-addr = \"10.0.0.2:23000\"\n\
             manager_addr = [\"10.0.0.9:24000\", \"10.0.0.10:24000\"]\n\
             persistence = true\nbatch_timeout = 0.5\n",
        );
        let path = f.path().to_str().unwrap();
        let args = parse(&["--config", path]).unwrap();
        assert_eq!(args.node_id, 2);
        assert_eq!(args.listen_addr, "10.0.0.2:23000".parse().unwrap());
        assert_eq!(args.manager_addr.len(), 2);
        assert!(args.persistence);
        assert_eq!(args.batch_timeout, 0.5);

        let args = parse(&[
            &format!("--config={path}"),
            "--node-id",
            "7",
            "--manager-addr=10.0.0.11:24000",
        ])
        .unwrap();
        assert_eq!(args.node_id, 7, "the flag wins");
        assert_eq!(
            args.manager_addr,
            vec!["10.0.0.11:24000".parse::<SocketAddr>().unwrap()],
            "a list flag replaces the file's list, it does not add to it"
        );
        assert_eq!(args.listen_addr, "10.0.0.2:23000".parse().unwrap());
    }

    #[test]
    fn without_a_file_the_flags_parse_as_always() {
        let args = parse(&["--node-id", "3"]).unwrap();
        assert_eq!(args.node_id, 3);
        assert!(!args.persistence);
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let f = file("node_id = 1\nlisten_adr = \"10.0.0.2:23000\"\n");
        let msg = file_error(parse(&["--config", f.path().to_str().unwrap()]));
        assert!(msg.contains("unknown key 'listen_adr'"), "{msg}");
        assert!(msg.contains("listen-addr"), "lists the known keys: {msg}");
    }

    #[test]
    fn wrong_kinds_and_bad_values_are_errors() {
        let f = file("persistence = \"yes\"\n");
        let msg = file_error(parse(&["--config", f.path().to_str().unwrap()]));
        assert!(msg.contains("'persistence' must be true or false"), "{msg}");

        let f = file("node_id = [1, 2]\n");
        let msg = file_error(parse(&["--config", f.path().to_str().unwrap()]));
        assert!(msg.contains("'node_id' must be one value"), "{msg}");

        // A value of the right kind that the flag refuses: clap's own message.
        let f = file("listen_addr = \"nowhere\"\n");
        match parse(&["--config", f.path().to_str().unwrap()]) {
            Err(ConfigError::Clap(e)) => assert!(e.to_string().contains("nowhere"), "{e}"),
            other => panic!("expected clap's error, got {other:?}"),
        }

        let f = file("node_id = 1\nnot toml at all\n");
        let msg = file_error(parse(&["--config", f.path().to_str().unwrap()]));
        assert!(msg.starts_with("config file "), "{msg}");

        let msg = file_error(parse(&["--config", "/nonexistent/distkv.toml"]));
        assert!(msg.contains("cannot read config file"), "{msg}");
    }
}
