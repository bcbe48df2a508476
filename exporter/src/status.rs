//! seam-status: prints what each seam daemon last published about itself; exit 1 if any is down.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Parser;
use seam_proto::selfstats::{self, Kind};
use seam_proto::{role, Role};

#[derive(Debug, Parser)]
#[command(
    name = "seam-status",
    version,
    about = "Shows each seam daemon's state and own counters (events, spans, drops, lost events, queues, reconnects)"
)]
struct Args {
    /// The daemons' run directory (default: SEAM_RUN_DIR, else /run/seam).
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn main() -> ExitCode {
    let args = match seam_proto::lifecycle::parse_args::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let run_dir = args.run_dir.unwrap_or_else(role::run_dir);
    let now = SystemTime::now();
    let mut all_up = true;
    let mut text = String::new();
    for role in Role::ALL {
        match selfstats::read(&run_dir, role) {
            Ok(snap) => {
                let live = snap.is_live(now);
                all_up &= live;
                text.push_str(&format!(
                    "{:<11} {:<5} pid {:<8} up {:<9} updated {} ago\n",
                    role.name(),
                    if live { "up" } else { "DOWN" },
                    snap.pid,
                    human(snap.uptime()),
                    human(snap.age(now)),
                ));
                for (name, kind, value) in &snap.metrics {
                    let kind = match kind {
                        Kind::Counter => "",
                        Kind::Gauge => " (now)",
                    };
                    text.push_str(&format!("    {:<28} {value}{kind}\n", name));
                }
            }
            Err(e) => {
                all_up = false;
                text.push_str(&format!("{:<11} DOWN  {e}\n", role.name()));
            }
        }
    }
    let mut out = std::io::stdout();
    let _ = out.write_all(text.as_bytes());
    if all_up {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
