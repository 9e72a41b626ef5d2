use super::*;
use crate::authfile::{Line, ParsedLine, RawLine, split_lines};

const A: &str = "cccccccccccb";
const B: &str = "cccccccccccd";
const C: &str = "ccccccccccce";

/// No user database: every name is only itself.
fn as_written(_: &str) -> Account {
    Account::Unknown
}

// The edits without a user database, as most tests here want them (glob
// imports are shadowed by these).
fn enroll(text: &[u8], user: &str, id: &str) -> Result<Edit, EditError> {
    super::enroll(text, user, id, &as_written)
}

fn revoke(text: &[u8], user: &str, id: Option<&str>, purge: bool) -> Result<Edit, EditError> {
    super::revoke(text, user, id, purge, &as_written)
}

/// sssd-like names: `alice`, `ALICE`, `alice@corp` are the account
/// `alice`; `bob` is bob; `ldap-down` cannot be resolved.
fn sssd(name: &str) -> Account {
    let base = name.to_lowercase();
    let base = base.strip_suffix("@corp").unwrap_or(&base);
    match base {
        "alice" | "bob" => Account::Known {
            name: base.to_owned(),
            uid: 1000,
        },
        "ldap-down" => Account::Failed("Connection refused".into()),
        _ => Account::Unknown,
    }
}

#[test]
fn revoke_edits_lines_written_under_an_alias_of_the_user() {
    let text = "alice:cccccccccccb\nALICE:cccccccccccd:ccccccccccce\nbob:cccccccccccd\nalice@corp:cccccccccccd\n";
    let e = super::revoke(text.as_bytes(), "alice", Some(B), false, &sssd).unwrap();
    assert_eq!(
        s(&e),
        "alice:cccccccccccb\nALICE:ccccccccccce\nbob:cccccccccccd\n"
    );
    assert_eq!(e.removed, [B, B]);
    // All keys, by an alias: the first of the user's lines stays, empty, under
    // its own name.
    let e = super::revoke(text.as_bytes(), "Alice@CORP", None, false, &sssd).unwrap();
    assert_eq!(s(&e), "alice:\nbob:cccccccccccd\n");
    // Without a user database only the name as given is the user.
    let e = revoke(text.as_bytes(), "alice", Some(B), false).unwrap_err();
    assert!(matches!(e, EditError::KeyNotEnrolled { .. }), "{e}");
}

#[test]
fn an_unresolvable_name_stops_the_edit() {
    // Whether `ldap-down` is alice cannot be told: nothing is changed.
    let text = b"alice:cccccccccccb\nldap-down:cccccccccccd\n";
    let e = super::revoke(text, "alice", Some(A), false, &sssd).unwrap_err();
    assert!(
        matches!(e, EditError::NssFailed { ref name, .. } if name == "ldap-down"),
        "{e}"
    );
    assert!(e.to_string().contains("nothing was changed"), "{e}");
    let e = super::enroll(b"", "ldap-down", A, &sssd).unwrap_err();
    assert!(matches!(e, EditError::NssFailed { .. }), "{e}");
    // A user the database does not know is only the name as written.
    let e = super::revoke(
        b"zed:cccccccccccb\nZED:cccccccccccd\n",
        "zed",
        None,
        true,
        &sssd,
    )
    .unwrap();
    assert_eq!(s(&e), "ZED:cccccccccccd\n");
}

fn en(text: &str, user: &str, id: &str) -> Edit {
    enroll(text.as_bytes(), user, id).unwrap()
}

fn rv(text: &str, user: &str, id: Option<&str>, purge: bool) -> Edit {
    revoke(text.as_bytes(), user, id, purge).unwrap()
}

fn s(e: &Edit) -> &str {
    std::str::from_utf8(&e.text).unwrap()
}

/// Other users' lines, comments and blank lines in every odd shape.
const NOISE: &str = "# comment: bob:cccccccccccb\n\n#\nalice:  cccc\ncarol:cccccccccccb\r\n \ndave::cccccccccccb:\n#bob:x\n";

#[test]
fn enroll_appends_to_the_users_last_line() {
    let e = en("bob:cccccccccccb\nalice:x\nbob:cccccccccccd\n", "bob", C);
    assert!(e.changed);
    assert_eq!(
        s(&e),
        "bob:cccccccccccb\nalice:x\nbob:cccccccccccd:ccccccccccce\n"
    );
}

#[test]
fn enroll_new_user_appends_a_line() {
    assert_eq!(s(&en("", "bob", A)), "bob:cccccccccccb\n");
    assert_eq!(s(&en("alice:x\n", "bob", A)), "alice:x\nbob:cccccccccccb\n");
    // No final newline: one is added first, the old bytes are kept.
    assert_eq!(s(&en("alice:x", "bob", A)), "alice:x\nbob:cccccccccccb\n");
    assert_eq!(
        s(&en("alice:x\r\n", "bob", A)),
        "alice:x\r\nbob:cccccccccccb\n"
    );
}

#[test]
fn enroll_to_empty_lines() {
    assert_eq!(s(&en("bob:\n", "bob", A)), "bob:cccccccccccb\n");
    assert_eq!(s(&en("bob\n", "bob", A)), "bob:cccccccccccb\n");
    assert_eq!(s(&en("bob", "bob", A)), "bob:cccccccccccb");
    assert_eq!(s(&en("bob::\n", "bob", A)), "bob::cccccccccccb\n");
    assert_eq!(
        s(&en("bob:cccccccccccd:\n", "bob", A)),
        "bob:cccccccccccd:cccccccccccb\n"
    );
}

#[test]
fn enroll_of_a_present_id_is_a_no_op() {
    for text in [
        "bob:cccccccccccb\n",
        "bob:cccccccccccd\nbob:cccccccccccb:\n",
        "bob:CCCCCCCCCCCB\n",
        "x:y\nbob:cccccccccccb",
    ] {
        let e = en(text, "bob", A);
        assert!(!e.changed, "{text:?}");
        assert_eq!(e.text, text.as_bytes());
    }
    // Same id for another user does not count.
    assert!(en("alice:cccccccccccb\n", "bob", A).changed);
}

#[test]
fn enroll_keeps_every_other_byte() {
    let text = format!("{NOISE}bob:cccccccccccd\n{NOISE}");
    let e = en(&text, "bob", A);
    assert_eq!(
        s(&e),
        format!("{NOISE}bob:cccccccccccd:cccccccccccb\n{NOISE}")
    );
    let e = en(NOISE, "bob", A);
    assert_eq!(s(&e), format!("{NOISE}bob:cccccccccccb\n"));
    // Names are exact and case-sensitive: "Bob", "bobby" are others.
    let e = en("Bob:cccccccccccb\nbobby:cccccccccccb\n", "bob", A);
    assert_eq!(
        s(&e),
        "Bob:cccccccccccb\nbobby:cccccccccccb\nbob:cccccccccccb\n"
    );
}

#[test]
fn enroll_starts_a_new_line_when_the_last_would_be_too_long() {
    let mut line = "bob".to_owned();
    while line.len() + 13 < MAX_LINE_LEN {
        line.push_str(":cccccccccccc");
    }
    let text = format!("{line}\n");
    let e = en(&text, "bob", A);
    assert_eq!(s(&e), format!("{line}\nbob:cccccccccccb\n"));
    for l in e.text.split(|&b| b == b'\n') {
        assert!(l.len() < MAX_LINE_LEN);
    }
}

#[test]
fn revoke_one_id() {
    let e = rv("bob:cccccccccccb:cccccccccccd\n", "bob", Some(A), false);
    assert_eq!(s(&e), "bob:cccccccccccd\n");
    assert_eq!(e.removed, [A]);
    // From every line of the user, any letter case.
    let e = rv(
        "bob:cccccccccccb\nalice:cccccccccccb\nbob:CCCCCCCCCCCB:cccccccccccd\n",
        "bob",
        Some(A),
        false,
    );
    assert_eq!(s(&e), "alice:cccccccccccb\nbob:cccccccccccd\n");
    assert_eq!(e.removed, [A, "CCCCCCCCCCCB"]);
    // Lines without the id are not touched.
    let e = rv(
        "bob::cccccccccccd:\nbob:cccccccccccb\n",
        "bob",
        Some(A),
        false,
    );
    assert_eq!(s(&e), "bob::cccccccccccd:\n");
}

#[test]
fn revoke_last_id_keeps_an_empty_line() {
    let e = rv("bob:cccccccccccb\n", "bob", Some(A), false);
    assert_eq!(s(&e), "bob:\n");
    let e = rv("x:y\nbob:cccccccccccb", "bob", Some(A), false);
    assert_eq!(s(&e), "x:y\nbob:");
    // Duplicate lines: the first is kept, empty.
    let e = rv(
        "bob:cccccccccccb\nx:y\nbob:cccccccccccb\n",
        "bob",
        Some(A),
        false,
    );
    assert_eq!(s(&e), "bob:\nx:y\n");
    assert_eq!(
        list(&e.text),
        [("bob".into(), vec![]), ("x".into(), vec!["y".into()])]
    );
}

#[test]
fn revoke_all() {
    let text = format!("{NOISE}bob:cccccccccccb\n{NOISE}bob:cccccccccccd:ccccccccccce\nbob\n");
    let e = rv(&text, "bob", None, false);
    assert_eq!(s(&e), format!("{NOISE}bob:\n{NOISE}"));
    assert_eq!(e.removed, [A, B, C]);
    // A lone "bob:" stays as it is; "bob" is normalised to "bob:".
    let e = rv("bob:\n", "bob", None, false);
    assert!(!e.changed);
    assert!(e.removed.is_empty());
    assert_eq!(s(&rv("bob\n", "bob", None, false)), "bob:\n");
}

#[test]
fn purge_removes_the_users_lines() {
    let text = format!("{NOISE}bob:cccccccccccb\n{NOISE}bob:\nbob:cccccccccccd");
    let e = rv(&text, "bob", None, true);
    assert_eq!(s(&e), format!("{NOISE}{NOISE}"));
    assert_eq!(s(&rv("bob:\n", "bob", None, true)), "");
    // With an id: the lines go only when the user has no id left.
    let e = rv("bob:cccccccccccb\nbob:\n", "bob", Some(A), true);
    assert_eq!(s(&e), "");
    let e = rv(
        "bob:cccccccccccb\nbob:\nbob:cccccccccccd\n",
        "bob",
        Some(A),
        true,
    );
    assert_eq!(s(&e), "bob:\nbob:cccccccccccd\n");
}

#[test]
fn revoke_errors() {
    let e = revoke(b"alice:cccccccccccb\n", "bob", Some(A), false).unwrap_err();
    assert!(matches!(e, EditError::NoSuchUser { .. }), "{e}");
    let e = revoke(b"alice:cccccccccccb\n", "bob", None, true).unwrap_err();
    assert!(matches!(e, EditError::NoSuchUser { .. }), "{e}");
    let e = revoke(b"", "bob", None, false).unwrap_err();
    assert!(matches!(e, EditError::NoSuchUser { .. }), "{e}");
    let e = revoke(
        b"bob:cccccccccccd\nalice:cccccccccccb\n",
        "bob",
        Some(A),
        false,
    )
    .unwrap_err();
    assert!(matches!(e, EditError::KeyNotEnrolled { .. }), "{e}");
    assert!(e.to_string().contains(A));
    let e = revoke(b"bob:\n", "bob", Some(A), true).unwrap_err();
    assert!(matches!(e, EditError::KeyNotEnrolled { .. }), "{e}");
}

#[test]
fn invalid_inputs() {
    for user in [
        "",
        "a:b",
        "a b",
        "a\tb",
        "a\nb",
        "a\0b",
        "#root",
        " bob",
        "bob\r",
        "\u{feff}bob",
        "bo\u{200b}b",
        "bob\u{200d}",
        "bob\u{7f}",
        "bob\u{85}",
    ] {
        let e = enroll(b"", user, A).unwrap_err();
        assert!(matches!(e, EditError::InvalidUser { .. }), "{user:?}: {e}");
        let e = revoke(b"", user, None, false).unwrap_err();
        assert!(matches!(e, EditError::InvalidUser { .. }), "{user:?}: {e}");
    }
    assert!(enroll(b"", &"u".repeat(257), A).is_err());
    assert!(enroll(b"", &"u".repeat(256), A).is_ok());
    for id in [
        "",
        "c",
        "ccc",
        "cccccccccccccccccc",
        "CCCCCCCCCCCB",
        "cccccccccca0",
        "ccccccccccc:",
        "cccc cccc",
        "ccccccccccé",
    ] {
        let e = enroll(b"", "bob", id).unwrap_err();
        assert!(
            matches!(e, EditError::InvalidPublicId { .. }),
            "{id:?}: {e}"
        );
        let e = revoke(b"bob:cccccccccccb\n", "bob", Some(id), false).unwrap_err();
        assert!(
            matches!(e, EditError::InvalidPublicId { .. }),
            "{id:?}: {e}"
        );
    }
    let e = enroll(b"", "bob", "CCCCCCCCCCCB").unwrap_err();
    assert!(e.to_string().contains("lower case"), "{e}");
    for id in ["cb", "cccccccccccccccc", "vvvvvvvvvvvv"] {
        assert!(enroll(b"", "bob", id).is_ok(), "{id}");
    }
}

#[test]
fn unsafe_user_lines_are_refused_with_their_number() {
    let cases: &[(&str, usize)] = &[
        ("x:y\nbob:cccccccccccb\r\n", 2),
        ("bob:cccccccccccb\0\n", 1),
        ("bob\0:cccccccccccb\n", 1),
        ("x\nx\nbob: cccccccccccb\n", 3),
        (" bob:cccccccccccb\n", 1),
        ("bob :cccccccccccb\n", 1),
        ("bob:not-an-id\n", 1),
        ("bob:ccc\n", 1),
        (":bob:cccccccccccb\n", 1),
        ("::bob\n", 1),
        ("bob\t:cccccccccccb\n", 1),
        ("bob:cccccccccccb\nbob:\u{a0}\n", 2),
        // Issue 12, item 4: ykhsmd fails these closed for bob.
        ("\u{feff}bob:cccccccccccb\n", 1),
        ("x:y\nbob\u{200b}:cccccccccccb\n", 2),
        ("b\u{2060}ob:cccccccccccb\n", 1),
        ("bob\u{7f}:cccccccccccb\n", 1),
    ];
    for (text, line) in cases {
        for result in [
            enroll(text.as_bytes(), "bob", C),
            revoke(text.as_bytes(), "bob", None, false),
            revoke(text.as_bytes(), "bob", Some(A), true),
        ] {
            match result {
                Err(EditError::UnsafeLine { line: l, .. }) => assert_eq!(l, *line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
    // Invalid UTF-8 after the user name.
    let e = enroll(b"bob:\xff\n", "bob", A).unwrap_err();
    assert!(matches!(e, EditError::UnsafeLine { line: 1, .. }), "{e}");
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn overlong_lines_naming_the_user_are_refused() {
    // The user's own line too long for pam_yubico.
    let long = format!("bob:{}\n", "cccccccccccc:".repeat(80));
    let e = enroll(long.as_bytes(), "bob", A).unwrap_err();
    assert!(matches!(e, EditError::UnsafeLine { line: 1, .. }), "{e}");
    // Another line, even a comment, whose tail pam_yubico reads as a
    // line of bob's: revoking must not leave that key behind silently.
    for head in ["# ", "alice:"] {
        let pad = MAX_LINE_LEN - head.len();
        let text = format!(
            "bob:cccccccccccb\n{head}{}bob:cccccccccccb\n",
            "x".repeat(pad)
        );
        let e = revoke(text.as_bytes(), "bob", Some(A), false).unwrap_err();
        assert!(matches!(e, EditError::UnsafeLine { line: 2, .. }), "{e}");
    }
    // A long line of someone else is left alone.
    let text = format!("alice:{}\n", "x".repeat(2000));
    let e = en(&text, "bob", A);
    assert_eq!(s(&e), format!("{text}bob:cccccccccccb\n"));
}

#[test]
fn other_users_odd_lines_do_not_matter() {
    let bytes =
        b"alice:  cccc\ncarol:cccccccccccb\r\nbobby:\0\n:\n\xc2\xa0\n\xff\xfe:x\n\tbobx:".to_vec();
    let e = enroll(&bytes, "bob", A).unwrap();
    let mut want = bytes.clone();
    want.extend_from_slice(b"\nbob:cccccccccccb\n");
    assert_eq!(e.text, want);
    let e = revoke(&e.text, "bob", None, true).unwrap();
    assert_eq!(e.text, [&bytes[..], b"\n"].concat());
}

#[test]
fn list_merges_duplicate_lines_in_order() {
    let text =
        "# c\nbob:cccccccccccb\n\nalice::cccccccccccd:\r\nbob:\ncarol\nbob:ccccccccccce\n:x\n";
    assert_eq!(
        list(text.as_bytes()),
        [
            ("bob".to_owned(), vec![A.to_owned(), C.to_owned()]),
            ("alice".to_owned(), vec![B.to_owned()]),
            ("carol".to_owned(), vec![]),
        ]
    );
    assert!(list(b"").is_empty());
}

#[test]
fn enroll_then_revoke_round_trips() {
    let base = format!("{NOISE}bob:cccccccccccd\n");
    let e = en(&base, "bob", A);
    let back = revoke(&e.text, "bob", Some(A), false).unwrap();
    assert_eq!(back.text, base.as_bytes());
}

/// Whether ykhsmd or pam_yubico reads the line as (also) `user`'s.
fn belongs_to(content: &[u8], user: &str) -> bool {
    let line = ParsedLine {
        raw: RawLine {
            number: 1,
            content,
            end: b"",
        },
        line: Line::parse(content),
    };
    line.names().contains(user)
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    /// Lines of other users and every odd shape, never bob's.
    fn other_line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"# bob:cccccccccccb".to_vec()),
            Just(b"".to_vec()),
            Just(b"alice:  cccc".to_vec()),
            Just(b"carol:cccccccccccb\r".to_vec()),
            Just(b"dave::cccccccccccd:".to_vec()),
            Just(b"bobby:cccccccccccb".to_vec()),
            Just(b"\xff\xfe:x".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_filter("not bob's", |l| !belongs_to(l, "bob")
                    && !l.contains(&b'\n')),
        ]
    }

    fn bob_line() -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::sample::subsequence(vec![A, B, C], 0..=3),
            any::<bool>(),
        )
            .prop_map(|(ids, colon)| {
                let mut l = "bob".to_owned();
                for id in ids {
                    l.push(':');
                    l.push_str(id);
                }
                if colon {
                    l.push(':');
                }
                l.into_bytes()
            })
    }

    fn file() -> impl Strategy<Value = (Vec<u8>, Vec<bool>)> {
        (
            proptest::collection::vec(
                prop_oneof![
                    3 => other_line().prop_map(|l| (l, false)),
                    1 => bob_line().prop_map(|l| (l, true)),
                ],
                0..12,
            ),
            any::<bool>(),
        )
            .prop_map(|(lines, final_nl)| {
                let mut text = Vec::new();
                let mut is_bob = Vec::new();
                let n = lines.len();
                for (i, (l, bob)) in lines.into_iter().enumerate() {
                    text.extend_from_slice(&l);
                    if i + 1 < n || final_nl {
                        text.push(b'\n');
                    }
                    is_bob.push(bob);
                }
                (text, is_bob)
            })
    }

    fn others(text: &[u8]) -> Vec<Vec<u8>> {
        split_lines(text)
            .into_iter()
            .filter(|l| !belongs_to(l.content, "bob"))
            .map(|l| l.content.to_vec())
            .collect()
    }

    fn bob_ids(text: &[u8]) -> Vec<String> {
        let mut ids: Vec<String> = list(text)
            .into_iter()
            .filter(|(u, _)| u == "bob")
            .flat_map(|(_, ids)| ids)
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    fn has_line(text: &[u8]) -> bool {
        list(text).iter().any(|(u, _)| u == "bob")
    }

    proptest! {
        #[test]
        fn enroll_adds_exactly_the_id((text, _) in file(), id in prop_oneof![Just(A), Just(B), Just(C)]) {
            let e = enroll(&text, "bob", id).unwrap();
            prop_assert_eq!(others(&e.text), others(&text));
            let mut want = bob_ids(&text);
            want.push(id.to_owned());
            want.sort();
            want.dedup();
            prop_assert_eq!(bob_ids(&e.text), want);
            prop_assert_eq!(e.changed, !bob_ids(&text).contains(&id.to_owned()));
            // Everything before bob's first line is untouched.
            let prefix: usize = split_lines(&text)
                .iter()
                .take_while(|l| !belongs_to(l.content, "bob"))
                .map(|l| l.content.len() + l.end.len())
                .sum();
            prop_assert!(e.text.starts_with(&text[..prefix]));
        }

        #[test]
        fn revoke_removes_exactly_the_id((text, is_bob) in file(), id in prop_oneof![Just(A), Just(B), Just(C)], purge in any::<bool>()) {
            let result = revoke(&text, "bob", Some(id), purge);
            let before = bob_ids(&text);
            if !is_bob.contains(&true) {
                let ok = matches!(result, Err(EditError::NoSuchUser { .. }));
                prop_assert!(ok, "{:?}", result);
                return Ok(());
            }
            if !before.contains(&id.to_owned()) {
                let ok = matches!(result, Err(EditError::KeyNotEnrolled { .. }));
                prop_assert!(ok, "{:?}", result);
                return Ok(());
            }
            let e = result.unwrap();
            prop_assert!(e.changed);
            prop_assert_eq!(others(&e.text), others(&text));
            let want: Vec<String> = before.into_iter().filter(|i| i != id).collect();
            prop_assert_eq!(bob_ids(&e.text), want.clone());
            prop_assert_eq!(has_line(&e.text), !(purge && want.is_empty()));
        }

        #[test]
        fn revoke_all_leaves_one_empty_line_or_none((text, is_bob) in file(), purge in any::<bool>()) {
            prop_assume!(is_bob.contains(&true));
            let e = revoke(&text, "bob", None, purge).unwrap();
            prop_assert_eq!(others(&e.text), others(&text));
            let bob_lines = split_lines(&e.text).into_iter().filter(|l| belongs_to(l.content, "bob")).count();
            prop_assert_eq!(bob_lines, usize::from(!purge));
            prop_assert!(bob_ids(&e.text).is_empty());
        }
    }
}
