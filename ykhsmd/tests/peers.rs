//! Who may ask what, and what a hostile or broken client can do: a non-root
//! peer (this test binary re-run as `nobody`) may verify only its own user
//! and never send admin requests; oversized, truncated and random frames get
//! an error or a closed connection while other clients keep being served;
//! thousands of silent connections do not stop logins.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::Env;
use ykhsm_proto::frame::{self, VERSION};
use ykhsm_proto::{Request, Response, ServerUid, Status, call};
use zeroize::Zeroizing;

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

/// Not a test: the client side of the tests below, run as `nobody` by
/// re-executing this test binary (`--ignored --exact helper_client`). Does
/// nothing unless `YKHSM_HELPER` is set.
#[test]
#[ignore = "helper process for the tests in this file"]
fn helper_client() {
    let Ok(action) = std::env::var("YKHSM_HELPER") else {
        return;
    };
    let socket = std::env::var("YKHSM_SOCKET").unwrap();
    let socket = Path::new(&socket);
    let arg = std::env::var("YKHSM_ARG").unwrap_or_default();
    let arg2 = std::env::var("YKHSM_ARG2").unwrap_or_default();
    let answer = |req: Request| match call(socket, ServerUid::ROOT, &req, Duration::from_secs(10)) {
        Ok(Response::Verdict { status }) | Ok(Response::Failed { status, .. }) => {
            status.to_string()
        }
        Ok(Response::ProtocolError { .. }) => "PROTOCOL_ERROR".into(),
        Ok(other) => format!("UNEXPECTED {other:?}"),
        Err(e) => format!("CLIENT_ERROR {e}"),
    };
    match action.as_str() {
        "verify" => println!(
            "RESULT {}",
            answer(Request::Verify {
                user: arg,
                otp: Zeroizing::new(arg2)
            })
        ),
        "has-user" => println!("RESULT {}", answer(Request::HasUser { user: arg })),
        "admin" => {
            for req in [
                Request::Status,
                Request::Decrypt {
                    otp: Zeroizing::new(arg2.clone()),
                },
                Request::ConsumeOtp {
                    otp: Zeroizing::new(arg2.clone()),
                },
                Request::WrapSecrets {
                    key_handle: 1,
                    nonce: [0; 6],
                    secrets: Zeroizing::new([0; 22]),
                },
                Request::CheckAead {
                    key_handle: 1,
                    nonce: [0; 6],
                    aead: [0; 30],
                },
                Request::CountersExport,
                Request::CountersMerge { records: vec![] },
            ] {
                let name = req.name();
                println!("RESULT {name} {}", answer(req));
            }
        }
        "oversized" => {
            let mut s = UnixStream::connect(socket).unwrap();
            let body = vec![0u8; frame::MAX_UNPRIVILEGED_FRAME + 1];
            let _ = frame::write_frame(&mut s, &body);
            let got = frame::read_frame(&mut s, frame::MAX_FRAME).map(|b| Response::decode(&b));
            let word = match got {
                Ok(Ok(Response::ProtocolError { .. })) => "PROTOCOL_ERROR".to_owned(),
                other => format!("UNEXPECTED {other:?}"),
            };
            println!("RESULT {word}");
        }
        "flood" => {
            let n: usize = arg.parse().unwrap();
            let mut held = Vec::new();
            for _ in 0..n {
                match UnixStream::connect(socket) {
                    Ok(s) => held.push(s),
                    Err(e) => {
                        println!("CONNECT_ERROR {e}");
                        break;
                    }
                }
            }
            println!("HELD {}", held.len());
            // Hold them, silent, until the parent closes stdin.
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(held);
        }
        other => panic!("unknown helper action {other}"),
    }
}

fn helper(env: &Env, action: &str, arg: &str, arg2: &str) -> Command {
    // The helper must reach the socket: open the test directory to others.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--ignored",
        "--exact",
        "helper_client",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("YKHSM_HELPER", action)
    .env("YKHSM_SOCKET", &env.socket)
    .env("YKHSM_ARG", arg)
    .env("YKHSM_ARG2", arg2)
    .uid(NOBODY)
    .gid(NOGROUP)
    .stdin(Stdio::null());
    c
}

/// Runs the helper as nobody and returns its `RESULT` lines.
fn as_nobody(env: &Env, action: &str, arg: &str, arg2: &str) -> Vec<String> {
    let out = helper(env, action, arg, arg2).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: Vec<String> = stdout
        .lines()
        // libtest prints "test helper_client ... " before the first line.
        .filter_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_owned()))
        .collect();
    assert!(
        !results.is_empty(),
        "helper printed no result: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    results
}

#[test]
fn non_root_peer_may_verify_only_its_own_user() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("nobody:ccccccdbjrgf\nalice:ccccccdbjrgf\n");
    let d = env.start();
    let otp = env.otp(&mut key);
    assert_eq!(as_nobody(&env, "verify", "alice", &otp), ["DENIED"]);
    assert_eq!(as_nobody(&env, "has-user", "alice", ""), ["DENIED"]);
    assert_eq!(as_nobody(&env, "has-user", "nobody", ""), ["OK"]);
    // The denied attempt consumed nothing.
    assert_eq!(as_nobody(&env, "verify", "nobody", &otp), ["OK"]);
    assert_eq!(d.verify("alice", &otp), Status::ReplayedOtp);
    env.wait_log("verify user=alice pubid=- status=DENIED");
}

/// Issue 12, item 4: the access check compares uids, not strings. The
/// daemon runs under nss_wrapper with the sssd-like alias module, where the
/// helper's uid (65534) is the account `alice`.
#[test]
fn non_root_peer_may_verify_an_alias_of_itself_but_not_of_another_user() {
    let env = Env::new();
    let _nss = env.with_nss(&[("alice", NOBODY), ("bob", 2002)]);
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\nbob:ccccccdbjrgf\nzed:ccccccdbjrgf\n");
    let d = env.start();
    let otp = env.otp(&mut key);
    for other in ["bob", "BOB", "bob@corp"] {
        assert_eq!(
            as_nobody(&env, "has-user", other, ""),
            ["DENIED"],
            "{other}"
        );
        assert_eq!(
            as_nobody(&env, "verify", other, &otp),
            ["DENIED"],
            "{other}"
        );
    }
    // A name the system does not know is nobody's own: denied, even with a
    // line in the authfile.
    assert_eq!(as_nobody(&env, "has-user", "zed", ""), ["DENIED"]);
    assert_eq!(as_nobody(&env, "has-user", "ALICE", ""), ["OK"]);
    assert_eq!(as_nobody(&env, "has-user", "alice@corp", ""), ["OK"]);
    // The denied attempts consumed nothing.
    assert_eq!(as_nobody(&env, "verify", "ALICE", &otp), ["OK"]);
    assert_eq!(d.verify("bob", &otp), Status::ReplayedOtp);
}

#[test]
fn non_root_peer_is_denied_every_admin_request() {
    let env = Env::new();
    let mut key = env.key("ccccccdbjrgf");
    let d = env.start();
    let otp = env.otp(&mut key);
    let results = as_nobody(&env, "admin", "", &otp);
    assert_eq!(
        results,
        [
            "status DENIED",
            "decrypt DENIED",
            "consume-otp DENIED",
            "wrap-secrets DENIED",
            "check-aead DENIED",
            "counters-export DENIED",
            "counters-merge DENIED"
        ]
    );
    // ConsumeOtp was refused, so the OTP is still fresh for root.
    let r = d.request(&Request::ConsumeOtp {
        otp: Zeroizing::new(otp),
    });
    assert!(
        matches!(
            r,
            Response::Consumed {
                status: Status::Ok,
                ..
            }
        ),
        "{r:?}"
    );
}

#[test]
fn non_root_peer_may_not_send_a_large_frame() {
    let env = Env::new();
    let _d = env.start();
    assert_eq!(as_nobody(&env, "oversized", "", ""), ["PROTOCOL_ERROR"]);
}

/// Sends raw bytes on a new connection and returns what came back before
/// the daemon closed it (bounded by a read timeout).
fn raw_exchange(socket: &Path, bytes: &[u8], then_close: bool) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    if then_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn protocol_error(answer: &[u8]) -> bool {
    frame::read_frame(&mut &answer[..], frame::MAX_FRAME)
        .ok()
        .and_then(|b| Response::decode(&b).ok())
        .is_some_and(|r| matches!(r, Response::ProtocolError { .. }))
}

#[test]
fn bad_frames_get_an_error_or_a_closed_connection_while_others_are_served() {
    let (env, mut key, d) = common::alice();
    let otps: Vec<String> = (0..200).map(|_| env.otp(&mut key)).collect();
    let socket = env.socket.clone();
    let served = {
        let socket = socket.clone();
        thread::spawn(move || {
            let mut statuses = Vec::new();
            for otp in otps {
                let r = call(
                    &socket,
                    ServerUid::ROOT,
                    &Request::Verify {
                        user: "alice".into(),
                        otp: Zeroizing::new(otp),
                    },
                    Duration::from_secs(10),
                );
                statuses.push(r.map_err(|e| e.to_string()));
            }
            statuses
        })
    };
    let too_large = {
        let mut h = vec![VERSION];
        h.extend_from_slice(&u32::MAX.to_be_bytes());
        h
    };
    assert!(
        protocol_error(&raw_exchange(&socket, &too_large, false)),
        "oversized"
    );
    assert!(
        protocol_error(&raw_exchange(&socket, &[9, 0, 0, 0, 1, 1], false)),
        "wrong version"
    );
    let mut bad_body = vec![VERSION, 0, 0, 0, 3];
    bad_body.extend_from_slice(&[0x7e, 1, 2]);
    assert!(
        protocol_error(&raw_exchange(&socket, &bad_body, false)),
        "unknown kind"
    );
    let mut trailing = frame::frame(&Request::Status.encode()).unwrap().to_vec();
    trailing[4] += 1;
    trailing.push(0);
    assert!(
        protocol_error(&raw_exchange(&socket, &trailing, false)),
        "trailing byte"
    );
    // Truncated: a header announcing 100 bytes, 10 sent, then EOF: closed.
    let mut truncated = vec![VERSION, 0, 0, 0, 100];
    truncated.extend_from_slice(&[1; 10]);
    assert!(
        raw_exchange(&socket, &truncated, true).is_empty(),
        "truncated"
    );
    // Random frames of every size.
    for i in 0..300usize {
        let len = (i * 37) % 700;
        let bytes: Vec<u8> = (0..len)
            .map(|j| u8::try_from((i * 131 + j * 7) % 251).unwrap())
            .collect();
        let _ = raw_exchange(&socket, &bytes, true);
    }
    let statuses = served.join().unwrap();
    assert_eq!(statuses.len(), 200);
    for s in statuses {
        assert_eq!(s, Ok(Response::Verdict { status: Status::Ok }));
    }
    // Still alive and serving.
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

/// Times one verify; panics if it is not `OK`.
fn timed_ok(d: &common::Daemon, otp: &str) -> Duration {
    let start = Instant::now();
    assert_eq!(d.verify("alice", otp), Status::Ok);
    start.elapsed()
}

#[test]
fn thousands_of_silent_connections_do_not_stop_logins() {
    raise_nofile();
    let env = Env::new();
    env.config("client_timeout_ms = 30000");
    let mut key = env.key("ccccccdbjrgf");
    env.set_authfile("alice:ccccccdbjrgf\n");
    let d = env.start();
    // 3000 silent connections from an unprivileged user, held open.
    let mut flood: Child = helper(&env, "flood", "3000", "")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(flood.stdout.take().unwrap()).lines();
    let held = loop {
        let line = lines.next().expect("helper output").unwrap();
        if let Some((_, n)) = line.split_once("HELD ") {
            break n.parse::<usize>().unwrap();
        }
    };
    assert!(held >= 1000, "the flood only opened {held} connections");
    // 1500 more from root itself, silent too.
    let root_flood: Vec<UnixStream> = (0..1500)
        .map(|_| UnixStream::connect(&env.socket).unwrap())
        .collect();
    // Logins still work, promptly (well inside the 30 s a silent client may take).
    let slowest = (0..20)
        .map(|_| timed_ok(&d, &env.otp(&mut key)))
        .max()
        .unwrap();
    assert!(
        slowest < Duration::from_secs(5),
        "slowest login took {slowest:?}"
    );
    env.wait_log("connection limit reached for peer_uid=65534");
    drop(flood.stdin.take());
    let _ = flood.wait();
    drop(root_flood);
    assert_eq!(d.verify("alice", &env.otp(&mut key)), Status::Ok);
}

#[test]
fn silent_client_is_disconnected_at_the_read_deadline() {
    let env = Env::new();
    env.config("client_timeout_ms = 300");
    let _d = env.start();
    let start = Instant::now();
    let answer = raw_exchange(&env.socket, &[VERSION, 0], false);
    let took = start.elapsed();
    assert!(answer.is_empty());
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}
