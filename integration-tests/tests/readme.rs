//! The README as an executable walk: every fenced `bash` block of README.md runs, in order, in
//! one shell, against the all-in-one server started as the README's first command says.
//!
//! What the runner maps, and nothing else: `cargo run [-q] --release [--] ARGS` (and a bare
//! `trialbridge ARGS`) is the binary under test with ARGS; the README's addresses (8080, 8081,
//! 2575, 8082) are the free ports the server got, in the text and in the defaults the commands
//! read (`TRIALBRIDGE_LISTEN`, `_GATEWAY_LISTEN`, `_MLLP_LISTEN`, `_GRPC_LISTEN`); `mllp_send` is python-hl7's from the test
//! venv; `postgres://user@host/warehouse` is a fresh database on the test server. Checks: a
//! command whose comment starts with `# -> TEXT` must print TEXT (stdout or stderr); every
//! other command must exit 0; a comment containing `(until Ctrl-C)` runs the command for a few
//! seconds. A block after `<!-- readme-test: not run: REASON -->` is listed, not run.
//! When the README changes, the test follows it; when the code changes, the test fails until
//! the README is true again.

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncBufReadExt;

/// A fenced bash block: its first line in README.md, its lines, and why it is not run.
struct Block {
    line: usize,
    lines: Vec<String>,
    not_run: Option<String>,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    let mut marker: Option<(usize, String)> = None;
    for (n, line) in readme.lines().enumerate() {
        if let Some(b) = current.as_mut() {
            if line.starts_with("```") {
                out.push(current.take().unwrap());
            } else {
                b.lines.push(line.to_string());
            }
            continue;
        }
        if let Some(reason) = line
            .trim()
            .strip_prefix("<!-- readme-test: not run: ")
            .and_then(|r| r.strip_suffix("-->"))
        {
            marker = Some((n, reason.trim().to_string()));
        }
        if line.trim() == "```bash" {
            let not_run = marker.take().filter(|(at, _)| n - at <= 3).map(|(_, r)| r);
            current = Some(Block {
                line: n + 2,
                lines: Vec::new(),
                not_run,
            });
        }
    }
    out
}

/// A logical command: its README line, its text (continuations, multi-line quotes and
/// here-documents joined) and the output its `# -> ` comment promises.
struct Command {
    line: usize,
    text: String,
    expect: Option<String>,
    until_interrupted: bool,
}

/// Whether single quotes are balanced in `text` (outside double quotes).
fn quotes_closed(text: &str) -> bool {
    let (mut single, mut double) = (false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if !single => {
                chars.next();
            }
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double => {
                // The rest of the line is a comment.
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            _ => {}
        }
    }
    !single && !double
}

fn commands(block: &Block) -> Vec<Command> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut start = 0;
    let mut heredoc: Option<String> = None;
    for (i, line) in block.lines.iter().enumerate() {
        if buf.is_empty() {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            start = block.line + i;
        }
        buf.push_str(line);
        buf.push('\n');
        if let Some(end) = &heredoc {
            if line.trim() == end {
                heredoc = None;
            } else {
                continue;
            }
        } else if let Some(at) = line.find("<<'") {
            let end = line[at + 3..]
                .split('\'')
                .next()
                .unwrap_or("EOF")
                .to_string();
            heredoc = Some(end);
            continue;
        }
        if line.trim_end().ends_with('\\') || !quotes_closed(&buf) {
            continue;
        }
        let last = line;
        let comment = last
            .find(" # ")
            .filter(|at| quotes_closed(&last[..*at]))
            .map(|at| last[at + 3..].trim().to_string());
        let expect = comment
            .as_deref()
            .and_then(|c| c.strip_prefix("-> "))
            .map(|e| e.trim().to_string());
        let until_interrupted = comment
            .as_deref()
            .is_some_and(|c| c.contains("(until Ctrl-C)"));
        out.push(Command {
            line: start,
            text: std::mem::take(&mut buf),
            expect,
            until_interrupted,
        });
    }
    assert!(
        buf.trim().is_empty(),
        "README line {start}: an unfinished command"
    );
    out
}

/// Single-quoted for the shell.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The shell script of the runnable blocks: each command in the current shell (so variables
/// and aliases carry on), its output shown and checked.
fn script(blocks: &[Block], ports: &Ports, warehouse: &str) -> (String, usize) {
    let mut s = String::from(
        "shopt -s expand_aliases\n\
         __o=$(mktemp)\n\
         cargo() { [ \"$1\" = run ] || { echo \"the README runs only 'cargo run'\" >&2; return 2; }; shift;\n\
           while [ $# -gt 0 ]; do case $1 in -q|--release) shift;; --) shift; break;; *) break;; esac; done;\n\
           [ $# -gt 0 ] || { echo 'cargo run without arguments starts the server: the runner did' >&2; return 2; };\n\
           if [ -n \"$__TIMEOUT\" ]; then timeout -s INT \"$__TIMEOUT\" \"$TB\" \"$@\"; else \"$TB\" \"$@\"; fi; }\n\
         trialbridge() { \"$TB\" \"$@\"; }\n",
    );
    let mut n = 0;
    for b in blocks.iter().filter(|b| b.not_run.is_none()) {
        for c in commands(b) {
            n += 1;
            let text = ports
                .map(&c.text)
                .replace("postgres://user@host/warehouse", warehouse);
            // A command that runs until interrupted gets a few seconds, then SIGINT.
            let text = if c.until_interrupted {
                format!("__TIMEOUT=4\n{text}\n__TIMEOUT=")
            } else {
                text
            };
            s.push_str(&format!(
                "echo {} >&2\n",
                quoted(&format!(
                    "--- README line {}: {}",
                    c.line,
                    c.text.lines().next().unwrap_or("")
                ))
            ));
            s.push_str(&format!(
                "{{ {text}\n}} > \"$__o\" 2>&1 </dev/null; __st=$?; cat \"$__o\" >&2\n"
            ));
            let fail = |why: &str| {
                format!(
                    "{{ echo {} >&2; exit 1; }}",
                    quoted(&format!("README line {}: {why}", c.line))
                )
            };
            match &c.expect {
                Some(e) => s.push_str(&format!(
                    "grep -qF -- {} \"$__o\" || {}\n",
                    quoted(e),
                    fail(&format!("the output does not show `{e}`"))
                )),
                None if c.until_interrupted => s.push_str(&format!(
                    "[ $__st -eq 0 ] || [ $__st -eq 124 ] || [ $__st -eq 130 ] || {}\n",
                    fail("failed (exit $__st)")
                )),
                None => s.push_str(&format!(
                    "[ $__st -eq 0 ] || {}\n",
                    fail("failed (exit $__st)")
                )),
            }
        }
    }
    (s, n)
}

/// The free ports standing in for the README's.
struct Ports {
    fhir: u16,
    gateway: u16,
    mllp: u16,
    feed: u16,
}

impl Ports {
    /// The listen settings that put the server (and the defaults of the commands) on them.
    fn listen_vars(&self) -> [(&'static str, String); 4] {
        [
            ("TRIALBRIDGE_LISTEN", format!("127.0.0.1:{}", self.fhir)),
            (
                "TRIALBRIDGE_GATEWAY_LISTEN",
                format!("127.0.0.1:{}", self.gateway),
            ),
            (
                "TRIALBRIDGE_MLLP_LISTEN",
                format!("127.0.0.1:{}", self.mllp),
            ),
            (
                "TRIALBRIDGE_GRPC_LISTEN",
                format!("127.0.0.1:{}", self.feed),
            ),
        ]
    }

    fn map(&self, text: &str) -> String {
        // `from` where it is a number of its own (not part of a longer one).
        let re = |from: &str, to: u16, t: &str| -> String {
            let mut out = String::new();
            let mut rest = t;
            while let Some(at) = rest.find(from) {
                let before = rest[..at].chars().last();
                let after = rest[at + from.len()..].chars().next();
                out.push_str(&rest[..at]);
                if before.is_some_and(|c| c.is_ascii_digit())
                    || after.is_some_and(|c| c.is_ascii_digit())
                {
                    out.push_str(from);
                } else {
                    out.push_str(&to.to_string());
                }
                rest = &rest[at + from.len()..];
            }
            out.push_str(rest);
            out
        };
        let t = re("8080", self.fhir, text);
        let t = re("8081", self.gateway, &t);
        let t = re("2575", self.mllp, &t);
        re("8082", self.feed, &t)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_block_of_the_readme_runs_as_written() {
    let readme = std::fs::read_to_string(integration_tests::repo_root().join("README.md")).unwrap();
    let all = blocks(&readme);
    // The first block is the two commands: the server this runner starts, and the tests that
    // run this runner.
    let first = &all[0];
    assert!(
        first.lines[0].starts_with("cargo run --release "),
        "{}",
        first.lines[0]
    );
    assert!(
        first.not_run.is_some(),
        "README line {}: the first block needs its marker",
        first.line
    );

    let work = tempfile::tempdir().unwrap();
    let ports = Ports {
        fhir: integration_tests::free_port(),
        gateway: integration_tests::free_port(),
        mllp: integration_tests::free_port(),
        feed: integration_tests::free_port(),
    };
    let tb = env!("CARGO_BIN_EXE_trialbridge-under-test");
    // `cargo run --release`: `serve` with its defaults, in a fresh working directory; only the
    // ports differ.
    let mut server = tokio::process::Command::new(tb);
    for (k, _) in std::env::vars() {
        if k.starts_with("TRIALBRIDGE_") {
            server.env_remove(k);
        }
    }
    server
        .current_dir(work.path())
        .envs(ports.listen_vars())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = server.spawn().unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let base = tokio::time::timeout(std::time::Duration::from_secs(120), out.next_line())
        .await
        .expect("the server prints its base URL")
        .unwrap()
        .unwrap();
    assert_eq!(base, format!("http://127.0.0.1:{}/fhir", ports.fhir));

    let server_url = std::env::var("TRIALBRIDGE_TEST_POSTGRES_URL").expect(
        "TRIALBRIDGE_TEST_POSTGRES_URL names no PostgreSQL: run the tests with `bash scripts/test.sh`",
    );
    let warehouse = integration_tests::postgres_database(
        &server_url,
        &format!("tb_readme_{}", std::process::id()),
    )
    .await;
    let mllp_send = std::env::var("TRIALBRIDGE_TEST_MLLP_SEND").expect(
        "TRIALBRIDGE_TEST_MLLP_SEND names python-hl7's mllp_send: run `bash scripts/test.sh`",
    );
    let path = format!(
        "{}:{}",
        Path::new(&mllp_send).parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (text, n) = script(&all, &ports, &warehouse);
    let marked: Vec<String> = all
        .iter()
        .filter_map(|b| b.not_run.as_ref().map(|r| format!("line {}: {r}", b.line)))
        .collect();
    let mut shell = tokio::process::Command::new("bash");
    for (k, _) in std::env::vars() {
        if k.starts_with("TRIALBRIDGE_") {
            shell.env_remove(k);
        }
    }
    // The commands that take the server's addresses from their defaults get the mapped ones.
    let result = shell
        .arg("-c")
        .arg(&text)
        .current_dir(work.path())
        .envs(ports.listen_vars())
        .env("TB", tb)
        .env("PATH", path)
        .output()
        .await
        .unwrap();
    let _ = child.kill().await;
    let log = String::from_utf8_lossy(&result.stderr);
    println!(
        "README: {} blocks, {} run ({n} commands), {} marked not run:\n  {}",
        all.len(),
        all.len() - marked.len(),
        marked.len(),
        marked.join("\n  ")
    );
    assert!(
        result.status.success(),
        "a README command does not do what the README says:\n{}",
        log.lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
