//! The model checked: the protocol passes; each broken variant is caught
//! with the violation it must produce.
//!
//! The exhaustive checks of the larger configurations run in release mode
//! only (`cargo test --release -p ykhsm-fleet-model`); in a debug build they
//! are ignored and the smaller ones still run.

use std::process::Command;
use std::time::Instant;

use stateright::Model;
use ykhsm_core::counters::{self, Position};
use ykhsm_fleet_model::{
    ACCEPTED_TWICE_ONLY_OFFLINE, Action, CONVERGED, CheckOptions, Config, DAEMON_IN_ORDER,
    EXTRAS_IN_WINDOW, Extent, FleetModel, NEVER_TWICE, Offline, Report, Rule, SOME_ACCEPTED,
    SOME_ACCEPTED_TWICE, STORE_AHEAD, SYNCED_IN_STORE, State, WindowCount, WonCommit, check,
    positions, show_path,
};

fn run(config: Config, steps: Option<usize>) -> (FleetModel, Report) {
    let model = FleetModel::new(config);
    let started = Instant::now();
    let report = check(
        model.clone(),
        &CheckOptions {
            threads: 1,
            steps,
            progress: false,
        },
    );
    eprintln!(
        "{:?}, steps {steps:?}: {} states ({} generated), {} steps deep, {:.2?}",
        model.config,
        report.unique_states,
        report.generated,
        report.steps,
        started.elapsed()
    );
    (model, report)
}

fn assert_passes(model: &FleetModel, report: &Report, extent: Extent) {
    if let Some((name, path)) = report.violations.first() {
        panic!("violated: {name}\n{}", show_path(model, path));
    }
    assert!(
        report.missing_examples.is_empty(),
        "no example of {:?}",
        report.missing_examples
    );
    assert_eq!(report.extent, extent);
}

/// Each step of a reported path is a step of the model, daemons in place.
fn assert_is_a_run(model: &FleetModel, path: &[(State, Option<Action>)]) {
    assert_eq!(path[0].0, model.init_states()[0]);
    for w in path.windows(2) {
        let (from, action) = (&w[0].0, w[0].1.expect("a step between two states"));
        assert_eq!(model.step(from, action).as_ref(), Some(&w[1].0));
    }
    assert!(path.last().expect("not empty").1.is_none());
}

fn actions(path: &[(State, Option<Action>)]) -> Vec<Action> {
    path.iter().filter_map(|(_, a)| *a).collect()
}

#[test]
fn the_models_rule_is_the_fleets_and_the_mutation_differs_only_on_equal() {
    let ps = positions(4);
    let stored: Vec<Option<Position>> = std::iter::once(None)
        .chain(ps.iter().copied().map(Some))
        .collect();
    for &s in &stored {
        for &p in &ps {
            assert_eq!(Rule::Fleet.raises(s, p), counters::raises(s, p));
            assert_eq!(
                Rule::EqualRaises.raises(s, p),
                counters::raises(s, p) || s == Some(p)
            );
            assert_eq!(
                Rule::Fleet.raises(s, p) != Rule::EqualRaises.raises(s, p),
                s == Some(p)
            );
        }
    }
}

#[test]
fn a_small_fleet_passes() {
    let (model, report) = run(
        Config {
            otps: 2,
            ..Config::default()
        },
        None,
    );
    assert_passes(&model, &report, Extent::Complete);
}

#[test]
#[cfg_attr(debug_assertions, ignore = "release only")]
fn two_daemons_three_otps_pass() {
    let (model, report) = run(Config::default(), None);
    assert_passes(&model, &report, Extent::Complete);
    assert!(report.unique_states > 1_000_000);
}

#[test]
#[cfg_attr(debug_assertions, ignore = "release only")]
fn three_daemons_two_otps_pass() {
    let (model, report) = run(
        Config {
            daemons: 3,
            otps: 2,
            ..Config::default()
        },
        None,
    );
    assert_passes(&model, &report, Extent::Complete);
}

#[test]
#[cfg_attr(debug_assertions, ignore = "release only")]
fn three_daemons_three_otps_pass_within_11_steps() {
    let (model, report) = run(
        Config {
            daemons: 3,
            otps: 3,
            ..Config::default()
        },
        Some(11),
    );
    assert_passes(&model, &report, Extent::Bounded(11));
}

#[test]
fn deny_passes_and_never_accepts_twice() {
    let (model, report) = run(
        Config {
            offline: Offline::Deny,
            ..Config::default()
        },
        None,
    );
    assert_passes(&model, &report, Extent::Complete);
    assert!(
        model.properties().iter().any(|p| p.name == NEVER_TWICE),
        "deny checks that no OTP is accepted twice"
    );
}

#[test]
fn the_examples_exist() {
    // The properties are not vacuous: OTPs are accepted, twice in the
    // offline window, the store gets ahead of every daemon (the crash point,
    // a late write) and the rows converge after an offline acceptance.
    let (model, report) = run(
        Config {
            otps: 2,
            ..Config::default()
        },
        None,
    );
    let names: Vec<&str> = model.properties().iter().map(|p| p.name).collect();
    for example in [SOME_ACCEPTED, SOME_ACCEPTED_TWICE, STORE_AHEAD, CONVERGED] {
        assert!(names.contains(&example));
    }
    assert!(report.passed());
}

#[test]
fn equal_raises_in_the_store_is_caught() {
    let (model, report) = run(
        Config {
            rule: Rule::EqualRaises,
            ..Config::default()
        },
        None,
    );
    assert!(!report.passed());
    assert_eq!(report.extent, Extent::Stopped);
    let path = report
        .violation(ACCEPTED_TWICE_ONLY_OFFLINE)
        .expect("an OTP accepted twice with the store reachable");
    assert!(report.violation(EXTRAS_IN_WINDOW).is_some());
    assert_is_a_run(&model, path);
    eprintln!("{}", show_path(&model, path));
    // The shortest one: one OTP presented at both daemons, the store lets
    // both writes through, both commit and answer OK; nothing offline.
    let steps = actions(path);
    assert_eq!(steps.len(), 6);
    assert!(
        steps
            .iter()
            .all(|a| !matches!(a, Action::LoginTimesOut { .. } | Action::Crash { .. }))
    );
    let last = &path.last().unwrap().0;
    let otp = (0..3).find(|&o| last.ok_online[o] >= 2).expect("two OKs");
    assert_eq!(last.ok_offline[otp], 0);
    assert_eq!(model.reported_window(last), 0);

    // With offline = "deny" it breaks "never twice" the same way.
    let (_, report) = run(
        Config {
            rule: Rule::EqualRaises,
            offline: Offline::Deny,
            ..Config::default()
        },
        None,
    );
    assert!(report.violation(NEVER_TWICE).is_some());
}

#[test]
fn an_offline_count_kept_in_memory_is_caught_through_a_crash() {
    let (model, report) = run(
        Config {
            otps: 2,
            window_count: WindowCount::InMemory,
            ..Config::default()
        },
        None,
    );
    let path = report
        .violation(EXTRAS_IN_WINDOW)
        .expect("an extra acceptance missing from the window");
    assert_is_a_run(&model, path);
    eprintln!("{}", show_path(&model, path));
    // Two offline acceptances of one OTP, then both daemons crash before
    // writing their counts: 6 steps.
    assert_eq!(actions(path).len(), 6);
    assert!(
        actions(path)
            .iter()
            .any(|a| matches!(a, Action::Crash { .. }))
    );
    assert!(report.violation(ACCEPTED_TWICE_ONLY_OFFLINE).is_none());

    // Without crashes the same variant passes: the crash is what loses it.
    let (model, report) = run(
        Config {
            otps: 2,
            window_count: WindowCount::InMemory,
            crashes: false,
            ..Config::default()
        },
        None,
    );
    assert_passes(&model, &report, Extent::Complete);
}

#[test]
fn overlapping_logins_with_an_unchecked_commit_are_caught() {
    let (model, report) = run(
        Config {
            logins_per_daemon: 2,
            won_commit: WonCommit::Unchecked,
            ..Config::default()
        },
        None,
    );
    // Both in 5 steps: two logins at one daemon, the store lets the older
    // OTP through, the newer one times out and is accepted offline, then
    // the older one's "won" is read and committed over it: the row's mark
    // is cleared though the store is below it, and the daemon's OKs go
    // backwards (with one OTP: the same OTP twice).
    for name in [DAEMON_IN_ORDER, SYNCED_IN_STORE] {
        let path = report.violation(name).expect(name);
        assert_is_a_run(&model, path);
        eprintln!("{name}:\n{}", show_path(&model, path));
        assert_eq!(actions(path).len(), 5);
    }
    // Counted all the same: nothing beyond the window.
    assert!(report.violation(EXTRAS_IN_WINDOW).is_none());
}

#[test]
fn overlapping_logins_with_the_checked_commit_pass_within_10_steps() {
    // The daemon's commit checks freshness again, so a second login of the
    // key in flight cannot slip an old OTP under a newer offline acceptance.
    let (model, report) = run(
        Config {
            logins_per_daemon: 2,
            ..Config::default()
        },
        Some(10),
    );
    assert_passes(&model, &report, Extent::Bounded(10));
}

#[test]
fn without_crashes_it_passes_on_fewer_states() {
    let config = Config {
        otps: 2,
        ..Config::default()
    };
    let (_, with) = run(config.clone(), None);
    let (model, without) = run(
        Config {
            crashes: false,
            ..config
        },
        None,
    );
    assert_passes(&model, &without, Extent::Complete);
    assert!(without.unique_states < with.unique_states);
}

#[test]
fn symmetry_reduction_keeps_the_verdicts() {
    // Kept in place, the daemons give more states and the same answers.
    for rule in [Rule::Fleet, Rule::EqualRaises] {
        let config = Config {
            otps: 2,
            rule,
            ..Config::default()
        };
        let (_, sorted) = run(config.clone(), None);
        let (_, in_place) = run(
            Config {
                symmetry: false,
                ..config
            },
            None,
        );
        assert_eq!(sorted.passed(), in_place.passed());
        let names = |r: &Report| r.violations.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        assert_eq!(names(&sorted), names(&in_place));
        assert!(sorted.unique_states <= in_place.unique_states);
    }
}

#[test]
fn the_check_command_exits_1_on_a_violation_and_0_on_a_pass() {
    let bin = env!("CARGO_BIN_EXE_ykhsm-fleet-model");
    let out = Command::new(bin)
        .args(["check", "--otps", "2", "--rule", "equal-raises"])
        .output()
        .expect("run the check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("VIOLATED: {ACCEPTED_TWICE_ONLY_OFFLINE}")));
    assert!(stdout.contains("counterexample"));
    assert!(stdout.trim_end().ends_with("FAIL"));

    let out = Command::new(bin)
        .args(["check", "--otps", "2"])
        .output()
        .expect("run the check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("every reachable state checked"));
    assert!(stdout.trim_end().ends_with("PASS"));
}
