//! Creating repositories and naming them: two `repo init` racing on one
//! fresh place leave exactly one repository that exactly one key opens (on
//! a local directory, the private SFTP server and the private S3 server), and
//! credentials written into a location are refused without ever being
//! repeated on stdout or stderr. scripts/test starts the servers and sets
//! BACKPIPE_TEST_*.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

/// A setting scripts/test exports for the private servers it starts.
fn server_setting(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test, which starts the private SFTP and S3 servers")
    })
}

/// Runs one of the built tools with `args`, stdin from /dev/null, in `cwd`.
fn tool(cwd: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin_dir().join(name));
    command.args(args).current_dir(cwd).stdin(Stdio::null()).env_remove("BACKPIPE_PASSPHRASE");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the tool runs")
}

mod concurrent_init {
    use super::*;

    /// Rounds per backend: each starts two `repo init` on a fresh place at once.
    const ROUNDS: usize = 20;

    #[derive(Clone, Copy, Debug)]
    enum Backend {
        Local,
        Sftp,
        S3,
    }

    /// A fresh place for round `round` of the test working in `dir`.
    fn location(backend: Backend, dir: &Path, round: usize) -> String {
        let unique = format!("{}-{round}", dir.file_name().unwrap().to_string_lossy());
        match backend {
            Backend::Local => dir.join(format!("R{round}")).display().to_string(),
            Backend::Sftp => format!(
                "sftp://{}@{}:{}{}/{unique}",
                server_setting("BACKPIPE_TEST_SFTP_USER"),
                server_setting("BACKPIPE_TEST_SFTP_HOST"),
                server_setting("BACKPIPE_TEST_SFTP_PORT"),
                server_setting("BACKPIPE_TEST_SFTP_ROOT"),
            ),
            Backend::S3 => format!(
                "s3://{}/{unique}?endpoint={}&region={}",
                server_setting("BACKPIPE_TEST_S3_BUCKET"),
                server_setting("BACKPIPE_TEST_S3_ENDPOINT"),
                server_setting("BACKPIPE_TEST_S3_REGION"),
            ),
        }
    }

    #[test]
    fn local() {
        two_inits_at_once_leave_one_repository(Backend::Local);
    }

    #[test]
    fn sftp() {
        two_inits_at_once_leave_one_repository(Backend::Sftp);
    }

    #[test]
    fn s3() {
        two_inits_at_once_leave_one_repository(Backend::S3);
    }

    /// Each round: two `repo init` with different passphrases on one fresh
    /// place, released at the same instant (each blocks reading its passphrase
    /// from a FIFO until both are started; stretching the passphrase then
    /// takes long enough that both find the place empty). Exactly one may
    /// succeed; the other fails with one line; one key slot remains, and the
    /// winner's passphrase opens the repository while the loser's does not.
    fn two_inits_at_once_leave_one_repository(backend: Backend) {
        let dir = scratch();
        let dir = dir.path();
        let mut raced = 0;
        for round in 0..ROUNDS {
            let repo = location(backend, dir, round);
            let mut inits = Vec::new();
            for side in ["a", "b"] {
                let gate = dir.join(format!("gate-{side}"));
                let _ = std::fs::remove_file(&gate);
                nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
                std::fs::write(dir.join(format!("pw-{side}")), format!("passphrase {side} {round}")).unwrap();
                let child = Command::new(bin_dir().join("repo"))
                    .args(["init", &repo, "--passphrase-file"])
                    .arg(&gate)
                    .current_dir(dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .env_remove("BACKPIPE_PASSPHRASE")
                    .spawn()
                    .unwrap();
                inits.push((side, gate, child));
            }
            // Opening a FIFO for writing waits for its reader: both tools are
            // running and reading when the passphrases go in, one after the other.
            let gates: Vec<std::fs::File> =
                inits.iter().map(|(_, gate, _)| std::fs::OpenOptions::new().write(true).open(gate).unwrap()).collect();
            for ((side, _, _), mut gate) in inits.iter().zip(gates) {
                gate.write_all(format!("passphrase {side} {round}").as_bytes()).unwrap();
            }
            let results: Vec<(&str, Output)> =
                inits.into_iter().map(|(side, _, child)| (side, child.wait_with_output().unwrap())).collect();
            let report = || {
                results
                    .iter()
                    .map(|(side, out)| {
                        format!("{side}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim_end())
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let winners: Vec<&str> =
                results.iter().filter(|(_, out)| out.status.success()).map(|(side, _)| *side).collect();
            assert_eq!(winners.len(), 1, "{backend:?} round {round}: exactly one init must succeed:\n{}", report());
            let (winner, loser) = if winners[0] == "a" { ("a", "b") } else { ("b", "a") };
            let lost = &results.iter().find(|(side, _)| *side == loser).unwrap().1;
            let lost_err = String::from_utf8_lossy(&lost.stderr);
            assert_eq!(lost_err.trim_end().lines().count(), 1, "{backend:?} round {round}: one line:\n{}", report());
            assert!(lost_err.starts_with("repo: "), "{}", report());
            if !lost_err.contains("not empty") {
                raced += 1;
                assert!(
                    lost_err.contains("`repo init` running at the same time"),
                    "{backend:?} round {round}:\n{}",
                    report()
                );
            }

            let listed = tool(dir, "repo", &["key", "list", &repo], &[]);
            assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
            let slots = String::from_utf8(listed.stdout).unwrap();
            assert_eq!(slots.lines().count(), 1, "{backend:?} round {round}: one key slot:\n{slots}\n{}", report());

            let pw = |side: &str| dir.join(format!("pw-{side}")).display().to_string();
            let opened = tool(dir, "repo", &["snapshots", &repo, "--passphrase-file", &pw(winner)], &[]);
            assert!(
                opened.status.success(),
                "{backend:?} round {round}: the winner's key must open it: {}\n{}",
                String::from_utf8_lossy(&opened.stderr),
                report()
            );
            let refused = tool(dir, "repo", &["snapshots", &repo, "--passphrase-file", &pw(loser)], &[]);
            assert_eq!(refused.status.code(), Some(2), "{backend:?} round {round}: the loser's key opens nothing");
        }
        // The test is only worth something if the two runs did overlap.
        assert!(raced > 0, "{backend:?}: in no round did both inits find the place empty");
        eprintln!("{backend:?}: {raced} of {ROUNDS} rounds raced past the emptiness check");
    }
}

mod secrets {
    use super::*;

    /// The secret pieces the locations below carry; none may ever be printed.
    const SECRETS: [&str; 3] = ["hunter2", "xyzzy", "AKIAEXAMPLE"];

    /// Locations with credentials in them: in the URL's user information, in
    /// an S3 `endpoint=` (plain and percent-encoded), and in forms that do not
    /// even parse as a URL (a password with a slash, spaces or a quote).
    fn locations() -> Vec<String> {
        let s3 = "s3://backpipe-test/secrets";
        vec![
            "sftp://backup:hunter2xyzzy@127.0.0.1:2222/srv/backups".into(),
            "sftp://backup:hunter2/xyzzy@127.0.0.1/srv/backups".into(),
            "sftp://backup:correct hunter2 'xyzzy@127.0.0.1/srv/backups".into(),
            "s3://AKIAEXAMPLE:hunter2xyzzy@backpipe-test/secrets".into(),
            "s3://AKIAEXAMPLE@backpipe-test/secrets".into(),
            format!("{s3}?endpoint=http://AKIAEXAMPLE:hunter2xyzzy@127.0.0.1:9000&region=us-east-1"),
            format!("{s3}?endpoint=http://hunter2xyzzy@127.0.0.1:9000"),
            format!("{s3}?endpoint=http%3A%2F%2FAKIAEXAMPLE%3Ahunter2xyzzy%40127.0.0.1%3A9000"),
            format!("{s3}?endpoint=http://AKIAEXAMPLE:hunter2/xyzzy@127.0.0.1:9000"),
        ]
    }

    /// Every tool that takes a repository, run with each location: exit
    /// status 2, one line on stderr, and no piece of the secret anywhere.
    #[test]
    fn credentials_in_a_location_are_refused_and_never_echoed() {
        let dir = scratch();
        let dir = dir.path();
        sh_ok(dir, "keygen k");
        for location in locations() {
            let runs: [(&str, Vec<&str>); 9] = [
                ("repo", vec!["init", &location, "--key-file", "k"]),
                ("ship", vec![&location, "--key-file", "k"]),
                ("fetch", vec![&location, "latest", "--key-file", "k"]),
                ("repo", vec!["snapshots", &location, "--key-file", "k"]),
                ("repo", vec!["key", "list", &location]),
                ("repo", vec!["check", &location, "--key-file", "k"]),
                ("chunk", vec!["--repo", &location, "--key-file", "k"]),
                ("encrypt", vec!["--repo", &location, "--key-file", "k"]),
                ("encrypt", vec!["-d", "--repo", &location, "--key-file", "k"]),
            ];
            for (name, args) in runs {
                let out = tool(dir, name, &args, &[]);
                let shown = format!("{name} {args:?}");
                expect_refused_quietly(&shown, &out);
            }
        }
        assert!(!dir.join("sftp:").exists() && !dir.join("s3:").exists(), "nothing was created locally");
    }

    /// An endpoint from the environment (when the URL names none) is a URL too.
    #[test]
    fn credentials_in_an_endpoint_variable_are_refused_and_never_echoed() {
        let dir = scratch();
        let dir = dir.path();
        sh_ok(dir, "keygen k");
        for variable in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_S3_ENDPOINT"] {
            let env = [(variable, "http://AKIAEXAMPLE:hunter2xyzzy@127.0.0.1:9")];
            let out = tool(dir, "repo", &["init", "s3://backpipe-test/secrets", "--key-file", "k"], &env);
            expect_refused_quietly(variable, &out);
            assert!(String::from_utf8_lossy(&out.stderr).contains(variable), "names the variable");
        }
    }

    /// Messages that quote a location which is accepted show its user name
    /// redacted too: `repo init`'s success line and the failures after it.
    #[test]
    fn user_names_in_messages_are_redacted() {
        let dir = scratch();
        let dir = dir.path();
        sh_ok(dir, "keygen k");
        // Nothing listens on port 1: the connection fails with the location in the message.
        let location = "sftp://hunter2xyzzy@127.0.0.1:1/srv/backups";
        let out = tool(dir, "repo", &["key", "list", location], &[]);
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        assert_no_secret("repo key list", &out);
        assert!(String::from_utf8_lossy(&out.stderr).contains("sftp://***@127.0.0.1:1/srv/backups"));
        // A local path that looks like a URL.
        let local = "./x://hunter2xyzzy@host/R";
        let out = tool(dir, "repo", &["init", local, "--key-file", "k"], &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_no_secret("repo init", &out);
        assert!(String::from_utf8_lossy(&out.stderr).contains("at ./x://***@host/R"));
        let out = tool(dir, "repo", &["init", local, "--key-file", "k"], &[]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
        assert_no_secret("repo init again", &out);
    }

    fn expect_refused_quietly(what: &str, out: &Output) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: exit status 2 expected:\n{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{what}: one line expected:\n{stderr}");
        assert_no_secret(what, out);
    }

    fn assert_no_secret(what: &str, out: &Output) {
        let printed = [String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)].concat();
        for secret in SECRETS {
            assert!(!printed.contains(secret), "{what} printed '{secret}':\n{printed}");
        }
    }
}

/// `scripts/install` into a temporary prefix: the tools run from there
/// (stripped of debug information), `man -l` renders every page, and every
/// completion loads in bash and completes the tool's options.
#[test]
fn install_puts_tools_manuals_and_completions_under_a_prefix() {
    let dir = scratch();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = bin_dir();
    let out =
        sh(&root, &format!("BACKPIPE_BUILT='{}' scripts/install '{}/prefix'", built.display(), dir.path().display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let prefix = dir.path().join("prefix");
    let tools: Vec<String> = std::fs::read_dir(root.join("bins/src/bin"))
        .unwrap()
        .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(tools.len() >= 12, "{tools:?}");
    for tool in &tools {
        let installed = prefix.join("bin").join(tool);
        let version = std::process::Command::new(&installed).arg("--version").output().unwrap();
        assert!(version.status.success() && String::from_utf8_lossy(&version.stdout).starts_with(tool.as_str()));
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert!(size(&installed) < size(&built.join(tool)), "{tool} is installed without its debug information");
        let page = sh(dir.path(), &format!("MANWIDTH=100 man -l '{}/share/man/man1/{tool}.1'", prefix.display()));
        let text = String::from_utf8_lossy(&page.stdout);
        assert!(page.status.success() && text.contains("NAME") && text.contains(tool.as_str()), "{tool}: {text}");
        let completion = prefix.join(format!("share/bash-completion/completions/{tool}"));
        let words = sh(
            dir.path(),
            &format!(
                "set +eu; source '{}'; COMP_WORDS=({tool} --); COMP_CWORD=1; COMP_LINE='{tool} --'; COMP_POINT=${{#COMP_LINE}}; \
                 _{} {tool} -- {tool}; echo \"${{COMPREPLY[*]}}\"",
                completion.display(),
                tool.replace('-', "__")
            ),
        );
        let words = String::from_utf8_lossy(&words.stdout);
        assert!(words.contains("--help"), "{tool}: completion offers {words}");
    }
}
