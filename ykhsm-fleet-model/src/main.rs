//! `ykhsm-fleet-model check`: checks the fleet protocol's model and prints
//! the states explored, the time, and `PASS` or each violation with its
//! path. Exit code 1 on a violation or a missing example.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ykhsm_fleet_model::{
    CheckOptions, Config, Extent, FleetModel, Offline, Rule, WindowCount, WonCommit, check,
    show_path,
};

#[derive(Parser, Debug)]
#[command(about = "Model-checks the fleet protocol (daemons sharing counters through one store)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Explores every reachable state breadth-first and checks the properties.
    Check(Args),
}

#[derive(clap::Args, Debug)]
struct Args {
    /// Daemons (1 to 3).
    #[arg(long, default_value_t = 2)]
    daemons: usize,
    /// OTPs the key emits (1 to 4).
    #[arg(long, default_value_t = 3)]
    otps: usize,
    /// `offline = "deny"` (default: "local").
    #[arg(long)]
    deny: bool,
    /// The store's rule: the fleet's, or the broken one where equal raises.
    #[arg(long, value_enum, default_value_t = RuleArg::Fleet)]
    rule: RuleArg,
    /// Where an offline acceptance is counted: in its commit, or in memory first (a mutation).
    #[arg(long, value_enum, default_value_t = CountArg::SameCommit)]
    window_count: CountArg,
    /// How a login the store let through is committed: the local check-and-set, or unchecked.
    #[arg(long, value_enum, default_value_t = WonArg::Checked)]
    won_commit: WonArg,
    /// Logins of the key one daemon may have in flight (2: a mutation).
    #[arg(long, default_value_t = 1)]
    logins_per_daemon: usize,
    /// Daemons never crash.
    #[arg(long)]
    no_crashes: bool,
    /// Keep the daemons in place (no symmetry reduction).
    #[arg(long)]
    no_symmetry: bool,
    /// Checker threads (1 finds the shortest counterexamples; --steps needs 1).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Check only the states reachable within this many steps.
    #[arg(long)]
    steps: Option<usize>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum RuleArg {
    Fleet,
    EqualRaises,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum WonArg {
    Checked,
    Unchecked,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum CountArg {
    SameCommit,
    InMemory,
}

fn main() -> ExitCode {
    let Command::Check(a) = Cli::parse().command;
    if !(1..=ykhsm_fleet_model::MAX_DAEMONS).contains(&a.daemons)
        || !(1..=ykhsm_fleet_model::MAX_OTPS).contains(&a.otps)
        || !(1..=ykhsm_fleet_model::MAX_LOGINS).contains(&a.logins_per_daemon)
    {
        eprintln!("--daemons 1..=3, --otps 1..=4, --logins-per-daemon 1..=2");
        return ExitCode::from(2);
    }
    if a.steps.is_some() && a.threads != 1 {
        eprintln!("--steps needs --threads 1 (breadth-first order)");
        return ExitCode::from(2);
    }
    let config = Config {
        daemons: a.daemons,
        otps: a.otps,
        offline: if a.deny {
            Offline::Deny
        } else {
            Offline::Local
        },
        rule: match a.rule {
            RuleArg::Fleet => Rule::Fleet,
            RuleArg::EqualRaises => Rule::EqualRaises,
        },
        crashes: !a.no_crashes,
        logins_per_daemon: a.logins_per_daemon,
        window_count: match a.window_count {
            CountArg::SameCommit => WindowCount::SameCommit,
            CountArg::InMemory => WindowCount::InMemory,
        },
        won_commit: match a.won_commit {
            WonArg::Checked => WonCommit::Checked,
            WonArg::Unchecked => WonCommit::Unchecked,
        },
        symmetry: !a.no_symmetry,
    };
    println!("model: {config:?}");
    let model = FleetModel::new(config);
    let options = CheckOptions {
        threads: a.threads,
        steps: a.steps,
        progress: true,
    };
    let report = check(model.clone(), &options);
    println!(
        "states: {} distinct ({} generated), {} steps deep, {:.2?}: {}",
        report.unique_states,
        report.generated,
        report.steps,
        report.elapsed,
        match report.extent {
            Extent::Complete => "every reachable state checked".to_owned(),
            Extent::Bounded(s) => format!("every state within {s} steps checked (more beyond)"),
            Extent::Stopped => "stopped at the first violation".to_owned(),
        }
    );
    for (name, path) in &report.violations {
        println!(
            "VIOLATED: {name}\n  counterexample ({} steps):\n{}",
            path.len() - 1,
            show_path(&model, path)
        );
    }
    for name in &report.missing_examples {
        println!("NO EXAMPLE: {name} (the model may be vacuous)");
    }
    if report.passed() {
        println!("PASS");
        ExitCode::SUCCESS
    } else {
        println!("FAIL");
        ExitCode::FAILURE
    }
}
