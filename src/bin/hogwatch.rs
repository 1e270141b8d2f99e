//! `hogwatch console [ADDRESS]`: ranks the blocking tasks of an app that runs
//! console-subscriber. The work is in `hogwatch::console`; this file reads the command line,
//! prints and picks the exit status.
//!
//! The command line is read by hand: one subcommand and five flags do not need a parser crate,
//! and `cargo install hogwatch --features cli` then builds nothing more than the library needs.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use hogwatch::console::{self, ConsoleError, Options, Progress};
use hogwatch::Report;

const USAGE: &str = "\
usage: hogwatch console [ADDRESS] [OPTIONS]

Connects to an app's console-subscriber (ADDRESS, default http://127.0.0.1:6669), follows its
tasks and ranks their spawn locations by time spent in polls over the threshold. A table every
second on stdout; the final report on Ctrl-C or after --duration.

options:
  --threshold DURATION        a poll longer than this is slow (default 10ms)
  --duration DURATION         stop after this long (default: until Ctrl-C)
  --connect-timeout DURATION  how long connecting may take (default 3s)
  --json                      print only the final report, in hogwatch's JSON schema
  -h, --help                  this text

DURATION is a number and a unit: 500us, 10ms, 1.5s, 2m.
exit status: 0 done, 1 the app went away (the report so far is printed), 2 bad usage or no
console-subscriber at ADDRESS.";

/// What the command line asks for.
#[derive(Debug)]
struct Command {
    options: Options,
    json: bool,
}

/// `500us`, `10ms`, `1.5s`, `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} has no unit (us, ms, s or m)"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration"))?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (us, ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}

/// Reads `hogwatch console [ADDRESS] [OPTIONS]`; `Ok(None)` for `--help`.
fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Command>, String> {
    match args.next().as_deref() {
        Some("console") => {}
        Some("-h" | "--help") => return Ok(None),
        Some(other) => return Err(format!("unknown command {other:?}")),
        None => return Err("no command".to_string()),
    }
    let mut options = Options::default();
    let mut json = false;
    let mut address = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--json" if inline.is_none() => json = true,
            "--threshold" => options.threshold = parse_duration(&value("--threshold")?)?,
            "--duration" => options.duration = Some(parse_duration(&value("--duration")?)?),
            "--connect-timeout" => {
                options.connect_timeout = parse_duration(&value("--connect-timeout")?)?;
            }
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg:?}")),
            _ if address.is_none() => address = Some(arg),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    if let Some(address) = address {
        options.address = address;
    }
    Ok(Some(Command { options, json }))
}

fn print_report(report: &Report, json: bool) {
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (a pager that quit) is no reason to fail: the report was the last thing.
    let _ = if json {
        match serde_json::to_string_pretty(report) {
            Ok(text) => writeln!(stdout, "{text}"),
            Err(error) => writeln!(std::io::stderr(), "hogwatch: cannot write JSON: {error}"),
        }
    } else {
        write!(stdout, "{}", report.to_text())
    };
}

fn on_progress(progress: Progress<'_>, json: bool, clear: bool) {
    match progress {
        Progress::Connected { address, tasks } => {
            eprintln!(
                "hogwatch: connected to {address}, {tasks} tasks; Ctrl-C for the final report"
            );
        }
        Progress::Tick {
            report,
            tasks,
            estimated,
        } => {
            if !json {
                let mut stdout = std::io::stdout().lock();
                let _ = write!(
                    stdout,
                    "{}{}",
                    if clear { "\x1b[2J\x1b[H" } else { "\n" },
                    report.to_text()
                );
                let _ = stdout.flush();
            }
            eprintln!(
                "hogwatch: {tasks} tasks followed, {} spawn locations, {estimated} awaiting their histogram",
                report.entries.len()
            );
        }
        Progress::SlowPolls {
            label,
            name,
            new_slow_polls,
            max_poll_us,
        } => {
            let name = name.map(|name| format!(" ({name})")).unwrap_or_default();
            eprintln!(
                "hogwatch: warning: {label}{name}: {new_slow_polls} polls over the threshold since the last table, longest {:.1} ms",
                max_poll_us as f64 / 1e3
            );
        }
        _ => {}
    }
}

fn main() -> ExitCode {
    let command = match parse(std::env::args().skip(1)) {
        Ok(Some(command)) => command,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("hogwatch: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hogwatch: cannot start a runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let json = command.json;
    let clear = std::io::stdout().is_terminal();
    let stop = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No SIGINT handler: follow until --duration or the app goes away.
            std::future::pending::<()>().await;
        }
    };
    let result = runtime.block_on(console::run(&command.options, stop, |progress| {
        on_progress(progress, json, clear)
    }));
    match result {
        Ok(report) => {
            print_report(&report, json);
            ExitCode::SUCCESS
        }
        Err(ConsoleError::Disconnected {
            address,
            reason,
            report,
        }) => {
            eprintln!("hogwatch: the app at {address} went away ({reason}); the report so far:");
            print_report(&report, json);
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("hogwatch: {error}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> impl Iterator<Item = String> + '_ {
        line.split_whitespace().map(str::to_string)
    }

    #[test]
    fn reads_the_flags() {
        let command = parse(args(
            "console 10.0.0.1:7000 --threshold 25ms --duration=2s --json",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(command.options.address, "10.0.0.1:7000");
        assert_eq!(command.options.threshold, Duration::from_millis(25));
        assert_eq!(command.options.duration, Some(Duration::from_secs(2)));
        assert!(command.json);
        let command = parse(args("console")).unwrap().unwrap();
        assert_eq!(command.options.address, console::DEFAULT_ADDRESS);
        assert!(parse(args("console --help")).unwrap().is_none());
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        for line in [
            "",
            "consol",
            "console --frobnicate",
            "console --threshold",
            "console --threshold 10",
            "console --threshold -5ms",
            "console --threshold 10parsecs",
            "console a b",
            "console --json=yes",
        ] {
            assert!(parse(args(line)).is_err(), "{line:?} was accepted");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1e400s").is_err());
    }
}
