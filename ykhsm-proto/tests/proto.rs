//! The protocol's rules: every message round-trips, decoding is total and
//! rejects trailing bytes, the size limit is checked before allocating, and
//! the client returns by its deadline whatever the server does.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use ykhsm_proto::codec::DecodeError;
use ykhsm_proto::frame::{self, FrameError, HEADER_LEN, MAX_UNPRIVILEGED_FRAME, VERSION};
use ykhsm_proto::report::{
    AuthfileStats, BackendKind, Check, DatabaseStats, Health, LogStats, Part, StatusReport,
};
use ykhsm_proto::{ClientError, CounterRecord, Request, Response, ServerUid, Status, call, status};
use zeroize::Zeroizing;

fn record() -> impl Strategy<Value = CounterRecord> {
    (
        ("[cbdefghijklnrtuv]{0,16}", any::<u32>()),
        proptest::option::of((any::<u16>(), any::<u8>())),
        (any::<u8>(), any::<u16>(), any::<u64>(), any::<u64>()),
        prop::collection::vec(any::<[u8; 20]>(), 0..4),
    )
        .prop_map(
            |((public_id, generation), last, (ts_high, ts_low, modified, reset_at), aeads)| {
                CounterRecord {
                    public_id,
                    generation,
                    last,
                    ts_high,
                    ts_low,
                    modified,
                    reset_at,
                    aeads,
                }
            },
        )
}

fn status() -> impl Strategy<Value = Status> {
    prop::sample::select(status::ALL.to_vec())
}

/// A refusal's word: any status but `OK`.
fn refusal() -> impl Strategy<Value = Status> {
    prop::sample::select(
        status::ALL
            .into_iter()
            .filter(|&s| s != Status::Ok)
            .collect::<Vec<_>>(),
    )
}

fn check() -> impl Strategy<Value = Check> {
    (
        prop_oneof![
            Just(Part::Device),
            "\\PC{0,8}".prop_map(Part::KeyHandle),
            Just(Part::AeadDir),
            Just(Part::Authfile),
            Just(Part::Database),
            Just(Part::Daemon),
            Just(Part::Fleet),
        ],
        prop::sample::select(vec![Health::Ok, Health::Warning, Health::Error]),
        "\\PC{0,30}",
    )
        .prop_map(|(part, health, detail)| Check {
            part,
            health,
            detail,
        })
}

fn status_report() -> impl Strategy<Value = StatusReport> {
    (
        ("\\PC{0,10}", any::<u64>(), "\\PC{0,20}", "\\PC{0,20}"),
        (any::<bool>(), "\\PC{0,20}"),
        prop::collection::vec(check(), 0..6),
        (any::<u64>(), any::<u64>()),
        (
            "\\PC{0,20}",
            proptest::option::of(any::<u64>()),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
        ),
        any::<[u64; 6]>(),
        prop::sample::subsequence(status::ALL.to_vec(), 0..=status::ALL.len()).prop_flat_map(
            |words| {
                let n = words.len();
                (Just(words), prop::collection::vec(any::<u64>(), n))
            },
        ),
    )
        .prop_map(
            |(
                (version, uptime_seconds, config, socket),
                (hsm, backend_path),
                checks,
                (users, lines_failing_closed),
                (path, keys, file_bytes, wal_bytes, last_commit),
                log,
                (words, counts),
            )| StatusReport {
                version,
                uptime_seconds,
                config,
                socket,
                backend: if hsm {
                    BackendKind::Yubihsm
                } else {
                    BackendKind::Soft
                },
                backend_path,
                checks,
                authfile: AuthfileStats {
                    users,
                    lines_failing_closed,
                },
                database: DatabaseStats {
                    path,
                    keys,
                    file_bytes,
                    wal_bytes,
                    last_commit,
                },
                log: LogStats {
                    queued_lines: log[0],
                    queued_bytes: log[1],
                    capacity_bytes: log[2],
                    dropped_daemon_lines: log[3],
                    dropped_unprivileged_lines: log[4],
                    counted_peer_uids: log[5],
                    syslog: (log[0] % 3 != 0).then(|| ykhsm_proto::report::SyslogStats {
                        path: "/dev/log".into(),
                        away_seconds: (log[1] % 2 == 0).then_some(log[2]),
                        missed_lines: log[3],
                    }),
                },
                answers: words.into_iter().zip(counts).collect(),
                // Drawn from numbers already drawn: the strategy tuple is at
                // its size limit.
                fleet: (log[4] % 3 != 0).then(|| ykhsm_proto::report::FleetStats {
                    connected: log[4] % 2 == 0,
                    last_contact: (log[5] % 2 == 0).then_some(log[0]),
                    offline: if log[1] % 2 == 0 { "local" } else { "deny" }.into(),
                    unsynced_rows: log[2],
                    oldest_unsynced: (log[3] % 2 == 0).then_some(log[4]),
                    offline_accepts: log[5],
                    last_offline_accept: (log[0] % 2 == 0).then_some(log[1]),
                    round_trips: log[2] / 2,
                    logins_sent: log[3] / 2,
                }),
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        ("\\PC{0,40}", "\\PC{0,60}").prop_map(|(user, otp)| Request::Verify {
            user,
            otp: Zeroizing::new(otp)
        }),
        "\\PC{0,40}".prop_map(|user| Request::HasUser { user }),
        Just(()).prop_map(|()| Request::Status),
        "\\PC{0,60}".prop_map(|otp| Request::Decrypt {
            otp: Zeroizing::new(otp)
        }),
        "\\PC{0,60}".prop_map(|otp| Request::ConsumeOtp {
            otp: Zeroizing::new(otp)
        }),
        (any::<u32>(), any::<[u8; 6]>(), any::<[u8; 22]>()).prop_map(|(key_handle, nonce, s)| {
            Request::WrapSecrets {
                key_handle,
                nonce,
                secrets: Zeroizing::new(s),
            }
        }),
        (any::<u32>(), any::<[u8; 6]>(), any::<[u8; 30]>()).prop_map(
            |(key_handle, nonce, aead)| {
                Request::CheckAead {
                    key_handle,
                    nonce,
                    aead,
                }
            }
        ),
        (prop::collection::vec(any::<u8>(), 0..40), "\\PC{0,60}").prop_map(|(key, otp)| {
            Request::HsmUnlock {
                master_key: Zeroizing::new(key),
                otp: Zeroizing::new(otp),
            }
        }),
        Just(()).prop_map(|()| Request::CountersExport),
        prop::collection::vec(record(), 0..5)
            .prop_map(|records| Request::CountersMerge { records }),
        (
            "[cbdefghijklnrtuv]{0,16}",
            prop::collection::vec(any::<[u8; 20]>(), 0..4),
            "\\PC{0,30}"
        )
            .prop_map(|(public_id, aeads, reason)| Request::CountersReset {
                public_id,
                aeads,
                reason
            }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        status().prop_map(|status| Response::Verdict { status }),
        (refusal(), "\\PC{0,80}")
            .prop_map(|(status, message)| Response::Failed { status, message }),
        "\\PC{0,80}".prop_map(|message| Response::ProtocolError { message }),
        status_report().prop_map(|report| Response::StatusInfo {
            report: Box::new(report)
        }),
        ("\\PC{0,50}", "[cbdefghijklnrtuv]{0,16}")
            .prop_map(|(line, public_id)| Response::Decrypted { line, public_id }),
        (
            status(),
            "[cbdefghijklnrtuv]{0,16}",
            any::<u16>(),
            any::<u8>()
        )
            .prop_map(
                |(status, public_id, counter, session_use)| Response::Consumed {
                    status,
                    public_id,
                    counter,
                    session_use
                }
            ),
        any::<[u8; 30]>().prop_map(|aead| Response::Wrapped { aead }),
        prop::collection::vec(record(), 0..5).prop_map(|records| Response::Counters { records }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(raised, unchanged)| Response::Merged { raised, unchanged }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(generation, aeads)| Response::Reset { generation, aeads }),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(req in request()) {
        prop_assert_eq!(Request::decode(&req.encode()).unwrap(), req);
    }

    #[test]
    fn responses_round_trip(resp in response()) {
        prop_assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = Request::decode(&bytes);
        let _ = Response::decode(&bytes);
    }

    #[test]
    fn truncated_messages_are_errors(req in request(), cut in any::<prop::sample::Index>()) {
        let body = req.encode();
        let n = cut.index(body.len());
        prop_assert!(Request::decode(&body[..n]).is_err());
    }

    #[test]
    fn trailing_bytes_are_refused(req in request(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
        let mut body = req.encode().to_vec();
        body.extend_from_slice(&extra);
        prop_assert!(Request::decode(&body).is_err());
    }
}

#[test]
fn huge_record_count_is_refused_without_allocating() {
    // kind COUNTERS_MERGE, then a count of 2^32-1 records and nothing else.
    let body = [0x15, 0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        Request::decode(&body),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn unknown_kind_and_bad_status_are_errors() {
    assert_eq!(
        Request::decode(&[0x7e]),
        Err(DecodeError::UnknownKind { kind: 0x7e })
    );
    let past_last = u8::try_from(ykhsm_proto::status::ALL.len()).unwrap();
    assert!(Response::decode(&[0x01, past_last]).is_err());
    assert!(Request::decode(&[]).is_err());
}

/// A refusal cannot say OK: only a Verdict lets a user in (issue 12,
/// item 8).
#[test]
fn failed_with_status_ok_does_not_decode() {
    // kind Failed, status OK, message "ok".
    let body = [0x02, 0x00, 0x00, 0x02, b'o', b'k'];
    assert_eq!(Response::decode(&body), Err(DecodeError::FailedWithOk));
    for s in status::ALL.into_iter().filter(|&s| s != Status::Ok) {
        let body = [0x02, s.code(), 0x00, 0x02, b'o', b'k'];
        assert_eq!(
            Response::decode(&body),
            Ok(Response::Failed {
                status: s,
                message: "ok".into()
            })
        );
    }
}

#[test]
fn secrets_are_not_in_debug_output() {
    let req = Request::Verify {
        user: "alice".into(),
        otp: Zeroizing::new("ccccccdbjrgfkljjucgrvddcgfhldbibefkvdvijhhjf".into()),
    };
    let dbg = format!("{req:?}");
    assert!(dbg.contains("alice") && !dbg.contains("kljjucgr"), "{dbg}");
}

#[test]
fn frame_over_limit_is_refused_before_reading_the_body() {
    let mut header = vec![VERSION];
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    let err = frame::read_frame(&mut &header[..], MAX_UNPRIVILEGED_FRAME).unwrap_err();
    assert!(
        matches!(err, FrameError::TooLarge { len, max } if len == u32::MAX as usize && max == MAX_UNPRIVILEGED_FRAME)
    );
}

#[test]
fn wrong_version_and_short_frames_are_errors() {
    let err = frame::read_frame(&mut &[2u8, 0, 0, 0, 1, 0][..], 100).unwrap_err();
    assert!(matches!(err, FrameError::Version { got: 2 }));
    let err = frame::read_frame(&mut &[VERSION, 0, 0][..], 100).unwrap_err();
    assert!(matches!(err, FrameError::Closed));
    let err = frame::read_frame(&mut &[VERSION, 0, 0, 0, 9, 1, 2][..], 100).unwrap_err();
    assert!(matches!(err, FrameError::Closed));
}

#[test]
fn frame_round_trips() {
    let mut buf = Vec::new();
    frame::write_frame(&mut buf, b"hello").unwrap();
    assert_eq!(buf.len(), HEADER_LEN + 5);
    assert_eq!(&*frame::read_frame(&mut &buf[..], 5).unwrap(), b"hello");
}

// ------------------------------------------------------------------ client

/// The uid this test runs as: servers it starts run as that uid.
fn this_uid() -> ServerUid {
    ServerUid(std::fs::metadata("/proc/self").unwrap().uid())
}

/// A server that takes one connection and returns everything it received.
fn recording_server(path: &Path) -> thread::JoinHandle<Vec<u8>> {
    let listener = UnixListener::bind(path).unwrap();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let resp = Response::Verdict { status: Status::Ok };
        let _ = frame::write_frame(&mut s, &resp.encode());
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    })
}

/// A server of another uid than the caller expects gets nothing: not the
/// user name, not the OTP (issue 12, item 8).
#[test]
fn client_sends_nothing_to_a_server_of_another_uid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let server = recording_server(&path);
    let other = ServerUid(this_uid().0.wrapping_add(1));
    let err = call(
        &path,
        other,
        &Request::Verify {
            user: "alice".into(),
            otp: Zeroizing::new("ccccccdbjrgfkljjucgrvddcgfhldbibefkvdvijhhjf".into()),
        },
        Duration::from_secs(5),
    )
    .unwrap_err();
    match &err {
        ClientError::WrongServer {
            path: p,
            uid,
            expected,
        } => {
            assert_eq!(
                (p.as_str(), *uid, *expected),
                (path.to_str().unwrap(), this_uid().0, other.0)
            );
        }
        e => panic!("{e}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(path.to_str().unwrap()) && text.contains(&format!("uid {}", this_uid().0)),
        "{text}"
    );
    assert_eq!(server.join().unwrap(), b"", "the server received something");
}

#[test]
fn client_talks_to_a_server_of_the_expected_uid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let server = recording_server(&path);
    let resp = call(&path, this_uid(), &Request::Status, Duration::from_secs(5)).unwrap();
    assert_eq!(resp, Response::Verdict { status: Status::Ok });
    let got = server.join().unwrap();
    let body = frame::read_frame(&mut &got[..], 100).unwrap();
    assert_eq!(Request::decode(&body).unwrap(), Request::Status);
}

#[test]
fn client_gets_the_servers_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let body = frame::read_frame(&mut s, 4096).unwrap();
        let req = Request::decode(&body).unwrap();
        assert!(matches!(req, Request::HasUser { ref user } if user == "bob"));
        let resp = Response::Verdict {
            status: Status::NoKeysForUser,
        };
        frame::write_frame(&mut s, &resp.encode()).unwrap();
    });
    let resp = call(
        &path,
        this_uid(),
        &Request::HasUser { user: "bob".into() },
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(
        resp,
        Response::Verdict {
            status: Status::NoKeysForUser
        }
    );
    server.join().unwrap();
}

#[test]
fn client_fails_fast_when_no_daemon_listens() {
    let dir = tempfile::tempdir().unwrap();
    let err = call(
        &dir.path().join("absent.sock"),
        this_uid(),
        &Request::Status,
        Duration::from_secs(5),
    )
    .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
}

/// A server that accepts and never answers: the call returns at its
/// deadline with a timeout, not later.
#[test]
fn client_returns_by_its_deadline_when_the_server_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        let _ = rx.recv(); // hold the connection open, silent
        let _ = s.write_all(b"");
    });
    let start = Instant::now();
    let err = call(
        &path,
        this_uid(),
        &Request::Status,
        Duration::from_millis(300),
    )
    .unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, ClientError::Timeout(_)), "{err}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    tx.send(()).unwrap();
    server.join().unwrap();
}

/// A server whose backlog is full (it never accepts): connect does not
/// block past the deadline.
#[test]
fn client_returns_by_its_deadline_when_the_backlog_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    sock.bind(&socket2::SockAddr::unix(&path).unwrap()).unwrap();
    sock.listen(0).unwrap();
    // Fill the backlog with connections that are never accepted.
    let mut held = Vec::new();
    let mut full = false;
    for _ in 0..8 {
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        match s.connect(&socket2::SockAddr::unix(&path).unwrap()) {
            Ok(()) => held.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => full = true,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        full,
        "the backlog never filled, so this test would not test it"
    );
    let start = Instant::now();
    let err = call(
        &path,
        this_uid(),
        &Request::Status,
        Duration::from_millis(300),
    )
    .unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, ClientError::Timeout(_)), "{err}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    drop(held);
}
