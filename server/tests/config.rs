//! The configuration as users meet it: `stellar --help` describes every option of
//! `Config` with its default, and a value that cannot work is refused by name, from
//! flags, the environment, a TOML file and the library alike.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::config;
use stellar_server::{Config, Driver, Server, StartError};

/// Runs `stellar` with `args` and `env` until it exits (killed and failed after
/// `TIMEOUT`); returns whether it succeeded and its stderr.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stellar"))
        .args(["--host", "127.0.0.1", "--port", "0", "--workers", "1"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stellar starts");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + common::TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stellar {args:?} {env:?} kept running: the option was accepted");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.success(), reader.join().expect("stderr reader"))
}

/// A Redis URL that cannot be one, from a flag, the environment and a TOML file.
const BAD_REDIS_URL: &str = "not a redis url";

#[test]
fn a_malformed_redis_url_stops_the_binary_naming_the_option() {
    let (ok, stderr) = run_to_exit(&["--redis-url", BAD_REDIS_URL], &[]);
    assert!(!ok && stderr.contains("redis_url"), "flag: {stderr}");
    let (ok, stderr) = run_to_exit(&[], &[("STELLAR_REDIS_URL", BAD_REDIS_URL)]);
    assert!(!ok && stderr.contains("redis_url"), "env: {stderr}");
    let dir = common::temp_dir();
    let file = dir.path().join("bad-redis.toml");
    std::fs::write(&file, format!("redis_url = \"{BAD_REDIS_URL}\"\n")).expect("write config");
    let path = file.to_str().expect("UTF-8 path");
    let (ok, stderr) = run_to_exit(&["--config", path], &[]);
    assert!(!ok && stderr.contains("redis_url"), "file: {stderr}");
}

#[test]
fn library_start_refuses_a_malformed_redis_url() {
    let config = Config {
        redis_url: Some(BAD_REDIS_URL.into()),
        ..config(1, Driver::Auto)
    };
    match Server::builder().config(config).start() {
        Err(e @ StartError::Cluster(_)) => {
            assert!(e.to_string().contains("redis_url"), "{e}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(server) => {
            server.handle().stop();
            server.wait();
            panic!("the server started");
        }
    }
}

/// Every field of `Config`: the keys of its default as TOML, and (since `None` fields
/// are not written) the field list serde gives when it refuses an unknown one.
fn config_fields() -> Vec<String> {
    let table = toml::Table::try_from(Config::default()).expect("Config serializes");
    let error = toml::from_str::<Config>("not_an_option = 1")
        .expect_err("unknown fields are refused")
        .to_string();
    let listed = error
        .split_once("expected one of")
        .expect("serde lists the fields")
        .1;
    let from_serde: Vec<String> = listed
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    for key in table.keys() {
        assert!(
            from_serde.contains(key),
            "{key} missing from {from_serde:?}"
        );
    }
    assert!(
        from_serde.len() > table.len(),
        "Option fields are listed too"
    );
    from_serde
}

/// The lines of `--help` describing `--flag`: from its line to the next option's.
fn help_entry<'a>(help: &'a str, flag: &str) -> Option<Vec<&'a str>> {
    let mut lines = help
        .lines()
        .skip_while(|l| !l.trim_start().split([',', ' ']).any(|word| word == flag));
    let first = lines.next()?;
    // Option lines are indented by at most 6; their help (possible values included) by 10.
    let rest = lines.take_while(|l| {
        let trimmed = l.trim_start();
        !(trimmed.starts_with('-') && l.len() - trimmed.len() <= 6)
    });
    Some(std::iter::once(first).chain(rest).collect())
}

#[test]
fn help_describes_every_option_with_its_default() {
    let output = Command::new(env!("CARGO_BIN_EXE_stellar"))
        .arg("--help")
        .output()
        .expect("stellar --help runs");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("UTF-8 help");
    for field in config_fields() {
        let flag = format!("--{}", field.replace('_', "-"));
        let entry = help_entry(&help, &flag).unwrap_or_else(|| panic!("{flag} missing:\n{help}"));
        let text = entry[1..].join(" ");
        let (description, default) = text
            .split_once("[default: ")
            .unwrap_or_else(|| panic!("{flag} shows no default: {text}"));
        assert!(
            description.trim().len() > 3,
            "{flag} has no description: {text}"
        );
        let shown = default.split(']').next().unwrap_or_default();
        assert!(!shown.trim().is_empty(), "{flag} shows an empty default");
        let env = format!("[env: STELLAR_{}", field.to_uppercase());
        assert!(text.contains(&env), "{flag} does not name {env}]: {text}");
    }
}
