//! Membership transitions, viewers, signals and live states.

use std::collections::BTreeSet;

use sesh_protocol::Role;

use super::*;

fn set(user: &str, role: Role) -> Change {
    Change::Set {
        user: user.into(),
        role,
    }
}

fn remove(user: &str) -> Change {
    Change::Remove { user: user.into() }
}

/// A session with the owner on c1 and bob on c2, decisions drained.
fn live() -> SessionCore {
    let mut c = core();
    c.join("c1", "owner", T0);
    c.join("c2", "bob", T0);
    drain(&mut c);
    c
}

#[test]
fn creation_takes_viewers_and_the_record_carries_them() {
    let create = CreateSession {
        members: Some(vec!["bob".into()]),
        viewers: Some(vec!["vic".into()]),
        ..CreateSession::default()
    };
    let m = Meta::new("s".into(), ("owner", "pro", 5), create, T0);
    assert!(m.is_member("vic") && !m.is_writer("vic"));
    assert!(m.is_writer("bob") && m.is_writer("owner"));
    assert_eq!(m.record(0).viewers, vec!["vic".to_owned()]);
}

#[test]
fn the_owner_sets_roles_and_the_record_is_stored_before_the_broadcast() {
    let mut c = live();
    let v0 = c.meta_version();
    c.change_members("owner", &set("vic", Role::Viewer), T0 + 1)
        .unwrap();
    let ds = drain(&mut c);
    let save = ds
        .iter()
        .position(|d| matches!(d, Decision::SaveMeta { meta, .. } if meta.viewers == ["vic"]))
        .expect("stored");
    let bcast = ds
        .iter()
        .position(|d| matches!(d, Decision::Broadcast { .. }))
        .expect("broadcast");
    assert!(save < bcast, "stored before anything else of it goes out");
    assert_eq!(c.meta_version(), v0 + 1, "D1 sees it with the next flush");
    assert!(c.next_flush_at().is_some());
    let got = deliver(&ds, &["c1", "c2"]);
    for conn in ["c1", "c2"] {
        assert_eq!(
            got[conn][0],
            json(r#"{"type":"members","members":["bob","carol"],"viewers":["vic"]}"#)
        );
    }
    // Moving a user between the lists; the same role again changes nothing.
    c.change_members("owner", &set("bob", Role::Viewer), T0 + 2)
        .unwrap();
    assert_eq!(c.meta().members, vec!["carol".to_owned()]);
    assert_eq!(c.meta().viewers, vec!["vic".to_owned(), "bob".to_owned()]);
    drain(&mut c);
    let v = c.meta_version();
    c.change_members("owner", &set("bob", Role::Viewer), T0 + 3)
        .unwrap();
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.meta_version(), v);
}

#[test]
fn who_may_change_what() {
    let mut c = live();
    let code = |r: Result<(), SessionError>| r.unwrap_err().code();
    assert_eq!(
        code(c.change_members("bob", &set("dave", Role::Writer), T0)),
        ErrorCode::Forbidden,
        "only the owner sets roles"
    );
    assert_eq!(
        code(c.change_members("bob", &set("bob", Role::Viewer), T0)),
        ErrorCode::Forbidden,
        "a member does not demote themself; they may leave"
    );
    assert_eq!(
        code(c.change_members("mallory", &remove("bob"), T0)),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(c.change_members("carol", &remove("bob"), T0)),
        ErrorCode::Forbidden,
        "a member removes only themself"
    );
    assert_eq!(
        code(c.change_members("owner", &set("owner", Role::Viewer), T0)),
        ErrorCode::ValidationFailed
    );
    assert_eq!(
        code(c.change_members("owner", &remove("owner"), T0)),
        ErrorCode::ValidationFailed
    );
    assert_eq!(
        code(c.change_members("owner", &remove("dave"), T0)),
        ErrorCode::NotFound
    );
    for i in 0..98 {
        c.change_members("owner", &set(&format!("u{i}"), Role::Viewer), T0)
            .unwrap();
    }
    assert_eq!(
        code(c.change_members("owner", &set("one-more", Role::Writer), T0)),
        ErrorCode::ValidationFailed,
        "100 besides the owner"
    );
    c.change_members("owner", &set("u0", Role::Writer), T0)
        .expect("a role change within the 100");
    c.change_members("carol", &remove("carol"), T0)
        .expect("a member leaves");
    c.end("owner", T0 + 5).unwrap();
    assert_eq!(
        code(c.change_members("owner", &set("bob", Role::Viewer), T0 + 6)),
        ErrorCode::SessionEnded
    );
    assert_eq!(
        code(c.change_members("bob", &remove("bob"), T0 + 6)),
        ErrorCode::SessionEnded
    );
}

#[test]
fn a_removed_users_sockets_get_removed_then_close_1008_and_nothing_more() {
    let mut c = live();
    c.join("c3", "bob", T0);
    drain(&mut c);
    c.change_members("owner", &remove("bob"), T0 + 1).unwrap();
    let ds = drain(&mut c);
    // The adapter drops a socket at its close: frames after it never reach it.
    let mut open: BTreeSet<&str> = ["c1", "c2", "c3"].into();
    let mut got: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for d in &ds {
        match d {
            Decision::Send { to, text } if open.contains(to.as_str()) => {
                got.entry(to.as_str()).or_default().push(json(text))
            }
            Decision::Broadcast { except, text } => {
                for conn in open.iter().filter(|c| except.as_deref() != Some(**c)) {
                    got.entry(conn).or_default().push(json(text));
                }
            }
            Decision::Close { conn, code, .. } => {
                assert_eq!(*code, 1008);
                assert_eq!(got[conn.as_str()], vec![json(r#"{"type":"removed"}"#)]);
                open.remove(conn.as_str());
            }
            _ => {}
        }
    }
    assert_eq!(open, ["c1"].into(), "both of bob's sockets closed");
    let types: Vec<&str> = got["c1"]
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["left", "left", "members"]);
    assert!(!c.has_conn("c2") && !c.has_conn("c3"));
    assert_eq!(c.admit("bob").unwrap_err().code(), ErrorCode::Forbidden);
    assert_eq!(
        c.check_member("bob").unwrap_err().code(),
        ErrorCode::Forbidden,
        "nor read"
    );
    // Presence hears both connections leave.
    let gone = ds
        .iter()
        .filter(|d| matches!(d, Decision::Presence { online: false, .. }))
        .count();
    assert_eq!(gone, 2);
}

#[test]
fn a_viewer_reads_but_its_points_are_forbidden_until_made_writer() {
    let mut c = live();
    c.change_members("owner", &set("bob", Role::Viewer), T0)
        .unwrap();
    drain(&mut c);
    assert!(c.admit("bob").is_ok(), "a viewer joins");
    c.on_text(
        "c2",
        r#"{"type":"point","id":"x","kind":"k"}"#,
        T0,
        &mut NoIds,
    );
    let ds = drain(&mut c);
    assert!(stored_points(&ds).is_empty());
    let got = deliver(&ds, &["c1", "c2"]);
    assert_eq!(got["c2"][0]["code"], "forbidden");
    assert_eq!(got["c2"][0]["ref"], "x");
    assert!(c.has_conn("c2"), "the socket stays open");
    let e = c
        .append("bob", vec![NewPoint::new("k")], T0, &mut NoIds)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden);
    // The viewer's `end` is the non-owner's: forbidden.
    c.on_text("c2", r#"{"type":"end"}"#, T0, &mut NoIds);
    let got = deliver(&drain(&mut c), &["c1", "c2"]);
    assert_eq!(got["c2"][0]["code"], "forbidden");
    // Made writer: the same socket writes.
    c.change_members("owner", &set("bob", Role::Writer), T0 + 1)
        .unwrap();
    drain(&mut c);
    let p = send_point(
        &mut c,
        "c2",
        r#"{"type":"point","id":"x","kind":"k"}"#,
        T0 + 2,
    );
    assert_eq!(p.map(|p| p.user_id), Some("bob".to_owned()));
}

#[test]
fn points_waiting_for_units_from_a_user_made_viewer_are_refused() {
    let mut c = created(meta(5), Config::default());
    c.join("c2", "bob", T0);
    drain(&mut c);
    c.on_text(
        "c2",
        r#"{"type":"point","id":"w","kind":"k"}"#,
        T0,
        &mut NoIds,
    );
    assert!(drain(&mut c).contains(&reserve(200)), "waits for units");
    c.change_members("owner", &set("bob", Role::Viewer), T0 + 1)
        .unwrap();
    let got = deliver(&drain(&mut c), &["c2"]);
    assert!(got["c2"]
        .iter()
        .any(|f| f["code"] == "forbidden" && f["ref"] == "w"));
    c.granted(200, day_of(T0), T0 + 2, &mut NoIds);
    assert!(stored_points(&drain(&mut c)).is_empty());
}

#[test]
fn signals_go_to_the_others_or_to_one_and_cost_nothing() {
    let mut c = live();
    c.join("c3", "carol", T0);
    c.change_members("owner", &set("carol", Role::Viewer), T0)
        .unwrap();
    drain(&mut c);
    let units = c.units();
    c.on_text("c3", r#"{"type":"signal","data":{"x":1}}"#, T0, &mut NoIds);
    let ds = drain(&mut c);
    let got = deliver(&ds, &["c1", "c2", "c3"]);
    let want = json(r#"{"type":"signal","from":"c3","userId":"carol","data":{"x":1}}"#);
    assert_eq!(got["c1"], vec![want.clone()], "viewers may signal");
    assert_eq!(got["c2"], vec![want.clone()]);
    assert!(!got.contains_key("c3"), "not echoed");
    assert!(ds
        .iter()
        .all(|d| !matches!(d, Decision::Store(_) | Decision::Reserve { .. })));
    assert_eq!(c.units(), units, "not charged");
    c.on_text(
        "c3",
        r#"{"type":"signal","data":{},"to":"c1"}"#,
        T0,
        &mut NoIds,
    );
    let got = deliver(&drain(&mut c), &["c1", "c2", "c3"]);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["c1"]);
    c.on_text(
        "c3",
        r#"{"type":"signal","data":{},"to":"nobody"}"#,
        T0,
        &mut NoIds,
    );
    let got = deliver(&drain(&mut c), &["c1", "c2", "c3"]);
    assert_eq!(got["c3"][0]["code"], "not_found");
}

#[test]
fn state_replaces_the_last_one_is_announced_kept_and_gone_with_the_connection() {
    let mut c = live();
    assert_eq!(c.view().participants[0].state, None);
    c.on_text(
        "c2",
        r#"{"type":"state","data":{"typing":true}}"#,
        T0,
        &mut NoIds,
    );
    let ds = drain(&mut c);
    assert!(ds.iter().any(|d| matches!(d,
        Decision::SaveState { conn, state } if conn == "c2" && state["typing"] == true)));
    let got = deliver(&ds, &["c1", "c2"]);
    assert_eq!(
        got["c1"],
        vec![json(
            r#"{"type":"state","connId":"c2","userId":"bob","data":{"typing":true}}"#
        )]
    );
    assert!(!got.contains_key("c2"));
    c.on_text(
        "c2",
        r#"{"type":"state","data":{"typing":false}}"#,
        T0,
        &mut NoIds,
    );
    drain(&mut c);
    let p = c.view().participants;
    assert_eq!(p[1].state.as_ref().unwrap()["typing"], false);
    // In `welcome` and `joined` too.
    c.join("c3", "carol", T0);
    let got = deliver(&drain(&mut c), &["c1", "c2", "c3"]);
    assert_eq!(got["c3"][0]["participants"][1]["state"]["typing"], false);
    assert_eq!(got["c1"][0]["state"], Value::Null);
    // Restored from the socket after hibernation; gone with the connection.
    let r = Restored {
        conns: vec![("c2".into(), "bob".into(), T0, p[1].state.clone())],
        ..Restored::default()
    };
    let mut back = SessionCore::restore(c.meta().clone(), Config::default(), r, T0);
    assert_eq!(back.view().participants[0].state, p[1].state);
    back.leave("c2", T0);
    assert!(back.view().participants.is_empty());
}
